/// The scalar specification of blockwise 8-bit quantization: plain loops,
/// binary search, no tables. The optimized kernels must equal it byte for byte.
public enum Blockwise8Reference {
    /// Number of midpoints (code[i] + code[i+1]) / 2 strictly below s.
    public static func index(_ s: Float, code: UnsafePointer<Float>) -> UInt8 {
        var lo = 0, hi = 255
        while lo < hi {
            let mid = (lo + hi) / 2
            if (code[mid] + code[mid + 1]) / 2 < s { lo = mid + 1 } else { hi = mid }
        }
        return UInt8(lo)
    }

    public static func quantize(_ x: [Float], code: [Float], blocksize: Int) -> (q: [UInt8], absmax: [Float]) {
        let n = x.count
        var q = [UInt8](repeating: 0, count: n)
        var absmax = [Float](repeating: 0, count: ceilDiv(n, blocksize))
        code.withUnsafeBufferPointer { c in
            for b in 0..<absmax.count {
                let r = (b * blocksize)..<min(n, (b + 1) * blocksize)
                var m: Float = 0
                for i in r { m = max(m, abs(x[i])) }
                absmax[b] = m
                let scale = BlockScale(absmax: m)
                for i in r { q[i] = index(scale.scaled(x[i]), code: c.baseAddress!) }
            }
        }
        return (q, absmax)
    }

    public static func dequantize(_ q: [UInt8], absmax: [Float], code: [Float], blocksize: Int) -> [Float] {
        q.indices.map { code[Int(q[$0])] * absmax[$0 / blocksize] }
    }

    /// The optimizer-state rule (StateRounding): the exact codes, and with
    /// `floorPositive` a positive value never at the zero code (it takes the
    /// smallest positive code). The 8-bit optimizer steps must equal it.
    public static func quantizeState(_ x: [Float], code: [Float], blocksize: Int, floorPositive: Bool) -> (q: [UInt8], absmax: [Float]) {
        var (q, absmax) = quantize(x, code: code, blocksize: blocksize)
        if floorPositive {
            let zero = code.firstIndex(of: 0)!
            for i in x.indices where x[i] > 0 && Int(q[i]) == zero { q[i] = UInt8(zero + 1) }
        }
        return (q, absmax)
    }
}
