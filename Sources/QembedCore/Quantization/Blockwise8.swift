import CQembedSIMD

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
        let streaming = StreamedOutput.streams(bytes: n * MemoryLayout<E.Storage>.stride)
        if n >= 4096, VBMI.enabled, let table = qembed__vbmi_dequant_new(code) {
            defer { qembed__vbmi_dequant_free(table) }
            dequantizeVBMI(e, table, A, n: n, absmax: absmax, blocksize: blocksize, chunk: chunk, streaming: streaming, dst)
            return
        }
        let avx2 = E.self == F32.self && qembed__avx2_enabled() != 0
        Parallel.forEachChunk(nchunks, grain: 1) { range in
            for c in range {
                StreamedOutput.write(dst, c * chunk ..< min(n, (c + 1) * chunk), streaming: streaming) { from, count, o in
                    forEachBlockRun(from, count, blocksize: blocksize) { b, i, stop in
                        let a = absmax[b]
                        if avx2 {
                            let d = UnsafeMutableRawPointer(o + (i - from)).assumingMemoryBound(to: Float.self)
                            qembed__8bit_run_avx2(A + i, stop - i, code, a, d)
                        } else {
                            for j in i..<stop { E.store(code[Int(A[j])] * a, o, j - from) }
                        }
                    }
                }
            }
        }
    }

    /// `dequantize` through the VBMI byte-plane kernel (equal to the loop above).
    static func dequantizeVBMI<E: FloatElement>(_ e: E.Type, _ table: OpaquePointer, _ A: UnsafePointer<UInt8>, n: Int,
                                                absmax: UnsafePointer<Float>, blocksize: Int, chunk: Int, streaming: Bool,
                                                _ dst: UnsafeMutablePointer<E.Storage>) {
        Parallel.forEachChunk(ceilDiv(n, chunk), grain: 1) { range in
            withUnsafeTemporaryAllocation(of: Float.self, capacity: 256) { buf in
                let b = buf.baseAddress!
                for c in range {
                    StreamedOutput.write(dst, c * chunk ..< min(n, (c + 1) * chunk), streaming: streaming) { from, count, o in
                        forEachBlockRun(from, count, blocksize: blocksize) { blk, i, stop in
                            let a = absmax[blk]
                            if E.self == F32.self {
                                let d = UnsafeMutableRawPointer(o + (i - from)).assumingMemoryBound(to: Float.self)
                                qembed__vbmi_dequantize(table, A + i, stop - i, a, d)
                            } else {
                                var j = i
                                while j < stop {
                                    let m = min(256, stop - j)
                                    qembed__vbmi_dequantize(table, A + j, m, a, b)
                                    var l = 0
                                    while l + 8 <= m { E.store8(F32.load8(b, l), o, j - from + l); l += 8 }
                                    while l < m { E.store(b[l], o, j - from + l); l += 1 }
                                    j += m
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
