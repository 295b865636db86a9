import CQembedSIMD

/// Embedding8bit (int8 rows + one float32 scale per row, bitsandbytes' SCB)
/// and Embedding4bit (FP4/NF4, any blocksize, optional nested statistics).
/// Lookups dequantize only the referenced rows. Tables live in owned buffers
/// or inside a mapped safetensors file (zero copy). Immutable after creation,
/// so every call may run concurrently.
public final class QuantizedEmbedding: @unchecked Sendable {
    public enum Kind: Int32, Sendable { case int8 = 0, fp4 = 1, nf4 = 2
        public var fourBit: FourBitType? { self == .int8 ? nil : (self == .fp4 ? .fp4 : .nf4) }
        public var name: String { self == .int8 ? "int8" : (self == .fp4 ? "fp4" : "nf4") }
    }

    public let kind: Kind
    public let numEmbeddings: Int
    public let embeddingDim: Int
    /// The dtype of the float weight it was made from (forward's default output).
    public let dtype: DType
    public let blocksize: Int
    // int8: q (rows x dim int8) and scb (rows floats).
    // 4-bit: q ((n+1)/2 packed bytes) and absmax (blocks floats), or nested:
    // qabsmax (blocks bytes), nestedAbsmax, nestedCode (256 floats), offset.
    public let q: UnsafeRawPointer
    public let scales: UnsafePointer<Float>?          // SCB or absmax (not nested)
    public let qabsmax: UnsafePointer<UInt8>?
    public let nestedAbsmax: UnsafePointer<Float>?
    public let nestedCode: UnsafePointer<Float>?
    public let nestedBlocksize: Int
    public let offset: Float
    /// The rows of a larger table this one holds (nil: a whole table).
    public let shard: RowShard?
    private let keepAlive: [AnyObject]

    public var nested: Bool { qabsmax != nil }
    public var numel: Int { numEmbeddings * embeddingDim }
    public var blocks: Int { ceilDiv(numel, blocksize) }

    /// Bytes of the quantized table and its statistics.
    public var tableBytes: Int {
        if kind == .int8 { return numel + 4 * numEmbeddings }
        var b = FourBit.packedBytes(numel) + 16 * 4
        if nested { b += blocks + 4 * ceilDiv(blocks, nestedBlocksize) + 256 * 4 + 4 } else { b += 4 * blocks }
        return b
    }

    public init(kind: Kind, rows: Int, dim: Int, dtype: DType, blocksize: Int, q: UnsafeRawPointer, scales: UnsafePointer<Float>?,
         qabsmax: UnsafePointer<UInt8>? = nil, nestedAbsmax: UnsafePointer<Float>? = nil, nestedCode: UnsafePointer<Float>? = nil,
         nestedBlocksize: Int = 256, offset: Float = 0, shard: RowShard? = nil, keepAlive: [AnyObject]) {
        self.kind = kind; numEmbeddings = rows; embeddingDim = dim; self.dtype = dtype; self.blocksize = blocksize
        self.q = q; self.scales = scales; self.qabsmax = qabsmax; self.nestedAbsmax = nestedAbsmax; self.nestedCode = nestedCode
        self.nestedBlocksize = nestedBlocksize; self.offset = offset; self.shard = shard; self.keepAlive = keepAlive
    }

    // MARK: Quantize

    /// Quantizes a rows x dim float table (f32, f16 or bf16) directly (no
    /// detour through float16, so values above 65504 survive). With `shard`,
    /// `w` holds rows [shard.rowOffset, shard.rowOffset + rows) of a table of
    /// shard.totalRows rows and the result is byte for byte those rows of the
    /// whole table's quantization: int8 scales are per row (any offset); a
    /// 4-bit shard must start and end on a block boundary (row x dim a
    /// multiple of blocksize; the end may be the table's end), and nested
    /// statistics are refused for a part of a table (their offset is the mean
    /// of every absmax of the whole table, which a shard does not see).
    public static func quantize(_ w: UnsafeRawPointer, dtype: DType, rows: Int, dim: Int, kind: Kind,
                                blocksize: Int = 64, compressStatistics: Bool = false,
                                shard: RowShard? = nil) throws(QembedError) -> QuantizedEmbedding {
        guard dtype.isFloat else { throw .unsupported("weight dtype \(dtype.name) is not a float type") }
        guard rows >= 1, dim >= 1 else { throw .invalid("num_embeddings and embedding_dim must be >= 1, got \(rows) x \(dim)") }
        let n = try checkedMul(rows, dim, "num_embeddings x embedding_dim")
        _ = try checkedMul(n, 4, "table bytes")
        if let shard { try checkShard(shard, rows: rows, dim: dim, kind: kind, blocksize: blocksize, compressStatistics: compressStatistics) }
        if kind == .int8 {
            let qb = try AlignedBuffer(byteCount: n, zeroed: false), sb = try AlignedBuffer(byteCount: rows * 4, zeroed: false)
            try Int8Rowwise.quantize(w, dtype: dtype, rows: rows, cols: dim, threshold: 0,
                                     out: qb.raw.assumingMemoryBound(to: Int8.self), rowStats: sb.floats())
            return QuantizedEmbedding(kind: kind, rows: rows, dim: dim, dtype: dtype, blocksize: dim, q: qb.raw,
                                      scales: sb.floats(), shard: shard, keepAlive: [qb, sb])
        }
        try FourBit.checkBlocksize(Int64(blocksize))
        let blocks = ceilDiv(n, blocksize)
        let qb = try AlignedBuffer(byteCount: FourBit.packedBytes(n), zeroed: false)
        let ab = try AlignedBuffer(byteCount: blocks * 4, zeroed: false)
        try FourBit.quantize(w, dtype: dtype, n: n, blocksize: blocksize, type: kind.fourBit!,
                             packed: qb.raw.assumingMemoryBound(to: UInt8.self), absmax: ab.floats())
        if !compressStatistics {
            return QuantizedEmbedding(kind: kind, rows: rows, dim: dim, dtype: dtype, blocksize: blocksize, q: qb.raw,
                                      scales: ab.floats(), shard: shard, keepAlive: [qb, ab])
        }
        let qa = try AlignedBuffer(byteCount: blocks, zeroed: false)
        let na = try AlignedBuffer(byteCount: ceilDiv(blocks, 256) * 4, zeroed: false)
        let offset = try Statistics.quantize(ab.floats(), count: blocks, nestedBlocksize: 256,
                                             qabsmax: qa.raw.assumingMemoryBound(to: UInt8.self), nestedAbsmax: na.floats())
        return QuantizedEmbedding(kind: kind, rows: rows, dim: dim, dtype: dtype, blocksize: blocksize, q: qb.raw, scales: nil,
                                  qabsmax: UnsafePointer(qa.raw.assumingMemoryBound(to: UInt8.self)), nestedAbsmax: na.floats(),
                                  nestedCode: QuantMap.signedDynamicPointer, offset: offset, shard: shard, keepAlive: [qb, qa, na])
    }

    /// Refuses a shard whose quantization would differ from the same rows of
    /// the whole table's (see quantize).
    static func checkShard(_ s: RowShard, rows: Int, dim: Int, kind: Kind, blocksize: Int,
                           compressStatistics: Bool) throws(QembedError) {
        _ = try checkedMul(s.totalRows, dim, "total_rows x dim")
        guard kind != .int8 else { return }
        try FourBit.checkBlocksize(Int64(blocksize))
        let start = s.rowOffset * dim, end = (s.rowOffset + rows) * dim
        guard start % blocksize == 0 else {
            throw .invalid("row_offset x dim = \(s.rowOffset) x \(dim) = \(start) is not a multiple of blocksize \(blocksize): "
                           + "a 4-bit shard must start on a block boundary (a block would straddle two shards)")
        }
        guard end % blocksize == 0 || s.rowOffset + rows == s.totalRows else {
            throw .invalid("(row_offset + rows) x dim = \(end) is not a multiple of blocksize \(blocksize) and the shard "
                           + "does not end the table (total_rows \(s.totalRows)): a 4-bit block would straddle two shards")
        }
        guard !compressStatistics || rows == s.totalRows else {
            throw .invalid("compress_statistics: nested statistics of a shard of \(rows) of \(s.totalRows) rows would differ "
                           + "from the whole table's (their offset is the mean of every block's absmax); quantize "
                           + "shards without them, or the whole table")
        }
    }

    /// From an Embedding layer's current weight.
    public static func from(_ e: Embedding, kind: Kind, blocksize: Int = 64, compressStatistics: Bool = false) throws(QembedError) -> QuantizedEmbedding {
        try e.lock.withShared { () throws(QembedError) in
            try quantize(e.weight.data.raw, dtype: e.weight.dtype, rows: e.config.numEmbeddings, dim: e.config.embeddingDim,
                         kind: kind, blocksize: blocksize, compressStatistics: compressStatistics)
        }
    }

    // MARK: Forward

    /// absmax of 4-bit block b (dequantizing nested statistics on the fly).
    @inline(__always)
    public func absmax(_ b: Int) -> Float {
        if let qa = qabsmax { return nestedCode![Int(qa[b])] * nestedAbsmax![b / nestedBlocksize] + offset }
        return scales![b]
    }

    /// out[k] = dequantized row indices[k] as `outDtype`.
    public func forward(_ indices: Indices, out: UnsafeMutableRawPointer, outDtype: DType) throws(QembedError) {
        guard outDtype.isFloat else { throw .unsupported("out_dtype: \(outDtype.name) is not a float type (use f32, f16 or bf16)") }
        try indices.validate(rows: numEmbeddings)
        try withFloatElement(outDtype) { (e) throws(QembedError) in gather(e, indices, out) }
    }

    func gather<E: FloatElement>(_ e: E.Type, _ indices: Indices, _ out: UnsafeMutableRawPointer) {
        let dim = embeddingDim
        let dst = out.assumingMemoryBound(to: E.Storage.self)
        let roundTo = dtype  // upstream returns .to(self.dtype): round to the weight dtype first
        let needsRound = roundTo != .f32 && !(roundTo == .f16 && E.self == F16.self) && !(roundTo == .bf16 && E.self == BF16.self)
        // Rows are decoded straight into the output. Streaming them through an
        // L1 piece (StreamedOutput) made 65,536 lookups in 250,000 x 1024
        // int8/NF4 tables 25-30% slower on Zen 3 (best of 30: 33 -> 44 ms,
        // 29-33 -> 36-42 ms), unlike the float gather and the dequantize kernels.
        if kind == .int8 {
            let q8 = q.assumingMemoryBound(to: Int8.self), scb = scales!
            Parallel.forEachChunk(indices.count, grain: max(1, 8192 / dim)) { r in
                for k in r {
                    if k + prefetchDistance < r.upperBound && dim <= prefetchMaxRowBytes { qembed__prefetch(q8 + indices[k + prefetchDistance] * dim, dim) }
                    let i = indices[k]
                    let s = scb[i] / 127
                    let row = q8 + i * dim, o = k * dim
                    for j in 0..<dim {
                        let v = Float(row[j]) * s
                        E.store(needsRound ? loadRounded(v, roundTo) : v, dst, o + j)
                    }
                }
            }
            return
        }
        let code = QuantMap.fourBit(kind.fourBit!)
        let packed = q.assumingMemoryBound(to: UInt8.self)
        let bs = blocksize
        // The AVX2 row decode (float32 out, no rounding to the weight dtype)
        // takes the scales of the blocks it spans from a small buffer.
        let avx2 = E.self == F32.self && !needsRound && qembed__avx2_enabled() != 0
        let nested = qabsmax != nil
        code.withUnsafeBufferPointer { cb in
            let c = cb.baseAddress!
            Parallel.forEachChunk(indices.count, grain: max(1, 8192 / dim)) { r in
                let scaleBuf = UnsafeMutablePointer<Float>.allocate(capacity: avx2 && nested ? dim / bs + 2 : 1)
                defer { scaleBuf.deallocate() }
                for k in r {
                    if k + prefetchDistance < r.upperBound && dim / 2 <= prefetchMaxRowBytes { qembed__prefetch(packed + indices[k + prefetchDistance] * dim / 2, (dim + 1) / 2) }
                    let e0 = indices[k] * dim, out = dst + k * dim  // table element e0 + j goes to out[j]
                    if avx2 {
                        let b0 = e0 / bs
                        if nested {
                            for b in b0 ... (e0 + dim - 1) / bs { scaleBuf[b - b0] = absmax(b) }
                        }
                        let scales = nested ? UnsafePointer(scaleBuf) : self.scales! + b0
                        let d = UnsafeMutableRawPointer(out).assumingMemoryBound(to: Float.self)
                        qembed__4bit_row_avx2(packed, e0, dim, bs, scales, c, 0, Int32(QEMBED__4BIT_STORE), d)
                    } else if e0 % 2 == 0 && !needsRound {
                        // Runs of whole pairs inside one block: two nibbles per byte.
                        var j = e0
                        while j < e0 + dim {
                            let b = j / bs
                            let runEnd = min(e0 + dim, (b + 1) * bs)
                            FourBit.dequantizeRun(e, packed, from: j, count: runEnd - j, absmax: absmax(b), code: c, dst: out - e0)
                            j = runEnd
                        }
                    } else {
                        for j in 0..<dim {
                            let el = e0 + j
                            let byte = packed[el / 2]
                            let nib = el % 2 == 0 ? byte >> 4 : byte & 15
                            let v = c[Int(nib)] * absmax(el / bs)
                            E.store(needsRound ? loadRounded(v, roundTo) : v, out, j)
                        }
                    }
                }
            }
        }
    }
}
