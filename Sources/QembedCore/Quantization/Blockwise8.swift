/// Blockwise 8-bit quantization (bitsandbytes quantize_blockwise /
/// dequantize_blockwise) with the exact nearest-midpoint rule.
/// The scalar spec is `Blockwise8Reference`; these kernels must match it byte for byte.
public enum Blockwise8 {
    /// Quantizes n elements of `dtype` at `A` into `out` (n bytes) and `absmax`
    /// (ceil(n / blocksize) floats). Nothing is written when it throws.
    public static func quantize(_ A: UnsafeRawPointer, dtype: DType, n: Int, search: CodeSearch,
                                blocksize: Int, out: UnsafeMutablePointer<UInt8>,
                                absmax: UnsafeMutablePointer<Float>) throws(QembedError) {
        try withFloatElement(dtype) { (e) throws(QembedError) in
            try quantize(e, A, n: n, search: search, blocksize: blocksize, out: out, absmax: absmax)
        }
    }

    static func quantize<E: FloatElement>(_ e: E.Type, _ A: UnsafeRawPointer, n: Int, search: CodeSearch,
                                          blocksize: Int, out: UnsafeMutablePointer<UInt8>,
                                          absmax: UnsafeMutablePointer<Float>) throws(QembedError) {
        let src = A.assumingMemoryBound(to: E.Storage.self)
        try Absmax.quantizeBlocks(e, src, n: n, blocksize: blocksize, absmax: absmax) { _, lo, count, scale in
            quantizeBlock(e, src + lo, count, scale, search, out + lo)
        }
    }

    @inline(__always)
    static func quantizeBlock<E: FloatElement>(_ e: E.Type, _ src: UnsafePointer<E.Storage>, _ count: Int,
                                               _ scale: BlockScale, _ search: CodeSearch,
                                               _ out: UnsafeMutablePointer<UInt8>) {
        // The hot path: 8 lanes, one table load per element.
        var i = scale.divides ? 0 : search.quantize8(e, src, count, reciprocal: scale.reciprocal, out)
        while i < count { out[i] = search.index(scale.scaled(E.load(src, i))); i += 1 }
    }

    /// out[i] = code[A[i]] * absmax[i / blocksize] in float32, stored as `dtype`.
    public static func dequantize(_ A: UnsafePointer<UInt8>, n: Int, absmax: UnsafePointer<Float>,
                                  code: UnsafePointer<Float>, blocksize: Int,
                                  out: UnsafeMutableRawPointer, dtype: DType) throws(QembedError) {
        try withFloatElement(dtype) { (e) throws(QembedError) in
            dequantize(e, A, n: n, absmax: absmax, code: code, blocksize: blocksize, out: out)
        }
    }

    static func dequantize<E: FloatElement>(_ e: E.Type, _ A: UnsafePointer<UInt8>, n: Int,
                                            absmax: UnsafePointer<Float>, code: UnsafePointer<Float>,
                                            blocksize: Int, out: UnsafeMutableRawPointer) {
        let dst = out.assumingMemoryBound(to: E.Storage.self)
        // Work in chunks of whole blocks (or of 64K elements inside one huge block).
        let chunk = blocksize >= 65536 ? 65536 : max(1, 65536 / blocksize) * blocksize
        let nchunks = ceilDiv(n, chunk)
        Parallel.forEachChunk(nchunks, grain: 1) { range in
            for c in range {
                var i = c * chunk
                let end = min(n, i + chunk)
                while i < end {
                    let b = i / blocksize
                    let stop = min(end, (b + 1) * blocksize)
                    let a = absmax[b]
                    for j in i..<stop { E.store(code[Int(A[j])] * a, dst, j) }
                    i = stop
                }
            }
        }
    }
}
