import QembedCore

/// Deterministic xorshift generator for test data (fresh values per seed).
struct Rng {
    var s: UInt64
    init(_ seed: UInt64) { s = seed &* 0x9E37_79B9_7F4A_7C15 | 1 }
    mutating func next() -> UInt64 { s ^= s << 13; s ^= s >> 7; s ^= s << 17; return s }
    mutating func uniform() -> Float { Float(next() >> 40) / Float(1 << 24) }
    /// Approximately standard normal (Irwin-Hall of 4 uniforms, rescaled).
    mutating func normal() -> Float { (uniform() + uniform() + uniform() + uniform() - 2) * 1.7320508 }
    mutating func floats(_ n: Int, scale: Float) -> [Float] { (0..<n).map { _ in normal() * scale } }
}

/// Values round-tripped through a storage dtype, and that storage as bytes.
func storage(_ x: [Float], _ dtype: DType) -> (values: [Float], bytes: [UInt8]) {
    switch dtype {
    case .f16:
        let h = x.map { Float16($0) }
        return (h.map { Float($0) }, h.withUnsafeBytes { Array($0) })
    case .bf16:
        let b = x.map { floatToBF16($0) }
        return (b.map { bf16ToFloat($0) }, b.withUnsafeBytes { Array($0) })
    default:
        return (x, x.withUnsafeBytes { Array($0) })
    }
}

/// Edge-case inputs random data never hits, for a given code and blocksize:
/// zero blocks, exact code midpoints with absmax 1, +/-absmax, subnormals.
func edgeCases(code: [Float], blocksize: Int) -> [[Float]] {
    let mids = (0..<(code.count - 1)).map { (code[$0] + code[$0 + 1]) / 2 }
    var onMidpoints: [Float] = [1]
    for i in 0..<(blocksize - 1) { onMidpoints.append(mids[i % mids.count]) }
    let zeros = [Float](repeating: 0, count: blocksize) + [Float](repeating: 0.5, count: blocksize) + [Float](repeating: 0, count: 3)
    var extremes: [Float] = [], subnormal: [Float] = [], mixed: [Float] = []
    for i in 0..<(2 * blocksize + 1) {
        let v: Float = i % 3 == 0 ? 7.25 : (i % 3 == 1 ? -7.25 : Float(i) / 100)
        extremes.append(v)
    }
    for i in 0..<blocksize {
        let bits = UInt32((i * 977) % 0x7FFFFF + 1)
        let sign: Float = i % 2 == 0 ? 1 : -1
        subnormal.append(Float(bitPattern: bits) * sign)
        mixed.append(i == 5 ? 1.5 : Float(bitPattern: UInt32(i * 7919 + 1)))
    }
    let negZero: [Float] = [-0.0, 0.0, -0.0, 1e-30, -1e-30]
    return [onMidpoints, zeros, extremes, subnormal, mixed, negZero]
}
