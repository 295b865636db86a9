/// Deterministic Xavier-uniform initialization: U(-a, a) with
/// a = sqrt(6 / (fan_in + fan_out)) (gain 1), from a counter-based generator
/// so the table is the same for a seed whatever the thread count.
enum Xavier {
    @inline(__always)
    static func mix(_ z0: UInt64) -> UInt64 {  // splitmix64 finalizer
        var z = z0 &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Fills `param` (rows x cols) with U(-a, a): elements offset ..< offset
    /// + numel of the draw (a row shard of a larger table takes its rows').
    static func fill(_ param: Parameter, fanIn: Int, fanOut: Int, seed: UInt64, offset: Int = 0) {
        let a = (6.0 / Double(fanIn + fanOut)).squareRoot()
        let n = param.numel
        let key = mix(seed)
        Parallel.forEachChunk(n, grain: 1 << 15) { range in
            for i in range {
                let u = Double(mix(key ^ UInt64(i + offset) &* 0xD1B5_4A32_D192_ED03) >> 11) * 0x1p-53  // [0, 1)
                storeFloat(Float((2 * u - 1) * a), param.data.raw, param.dtype, i)
            }
        }
    }
}
