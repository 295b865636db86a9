/// Int8 row-wise quantization (bitsandbytes int8_vectorwise_quant/dequant, LLM.int8).
public enum Int8Rowwise {
    /// 1/127 as float32, the factor bitsandbytes multiplies by.
    public static let inv127: Float = 7.874015718698502e-3

    /// Quantizes a rows x cols matrix. With threshold > 0, columns holding an
    /// element with |x| >= threshold are outlier columns: their elements are
    /// left out of row_stats and zeroed in `out`. Returns the outlier columns
    /// (ascending). Throws `.nonFinite` naming the first NaN/Inf; without a
    /// threshold, rows before it may have been written by then (one pass:
    /// each row's maximum, then its codes while it is in cache).
    @discardableResult
    public static func quantize(_ A: UnsafeRawPointer, dtype: DType, rows: Int, cols: Int, threshold: Float,
                                out: UnsafeMutablePointer<Int8>, rowStats: UnsafeMutablePointer<Float>) throws(QembedError) -> [Int32] {
        try withFloatElement(dtype) { (e) throws(QembedError) in
            try quantize(e, A, rows: rows, cols: cols, threshold: threshold, out: out, rowStats: rowStats)
        }
    }

    static func quantize<E: FloatElement>(_ e: E.Type, _ A: UnsafeRawPointer, rows: Int, cols: Int, threshold: Float,
                                          out: UnsafeMutablePointer<Int8>, rowStats: UnsafeMutablePointer<Float>) throws(QembedError) -> [Int32] {
        let src = A.assumingMemoryBound(to: E.Storage.self)
        if threshold <= 0 {
            try Absmax.quantizeBlocks(e, src, n: rows * cols, blocksize: cols, absmax: rowStats) { r, lo, _, _ in
                quantizeRow(e, src + lo, cols, rowStats[r], out + lo)
            }
            return []
        }
        let stats = UnsafeMutablePointer<Float>.allocate(capacity: rows)
        defer { stats.deallocate() }
        // Pass 1: finiteness and plain row maxima (blocks of one row).
        try Absmax.blocks(e, src, n: rows * cols, blocksize: cols, absmax: stats)
        var isOutlier = [Bool](repeating: false, count: cols)
        for r in 0..<rows where stats[r] >= threshold {
            for c in 0..<cols where abs(E.load(src, r * cols + c)) >= threshold { isOutlier[c] = true }
        }
        let outlierCols = (0..<cols).filter { isOutlier[$0] }.map { Int32($0) }
        if !outlierCols.isEmpty {
            // Row maxima over the non-outlier elements (outliers count as zero).
            for r in 0..<rows where stats[r] >= threshold {
                var m: Float = 0
                for c in 0..<cols {
                    let v = abs(E.load(src, r * cols + c))
                    if v < threshold { m = max(m, v) }
                }
                stats[r] = m
            }
        }
        let hasOutliers = !outlierCols.isEmpty
        isOutlier.withUnsafeBufferPointer { mask in
            Parallel.forEachChunk(rows, grain: max(1, 16384 / max(cols, 1))) { range in
                for r in range {
                    let o = out + r * cols
                    quantizeRow(e, src + r * cols, cols, stats[r], o)
                    if hasOutliers { for c in 0..<cols where mask[c] { o[c] = 0 } }
                }
            }
        }
        rowStats.update(from: stats, count: rows)
        return outlierCols
    }

    /// One row's codes: round(x * scale) clamped to [-127, 127].
    /// bitsandbytes writes 127.0 / row_stats, which torch evaluates as
    /// reciprocal(row_stats) * 127 (two float32 roundings): the same here,
    /// so results match to the bit. When 1/row_stats overflows (a row of
    /// subnormals) or (1/row_stats)*127 does (max |x| below ~3.7e-37),
    /// x / row_stats * 127 is used instead (zeros stay zero).
    @inline(__always)
    static func quantizeRow<E: FloatElement>(_ e: E.Type, _ row: UnsafePointer<E.Storage>, _ cols: Int, _ st: Float,
                                             _ o: UnsafeMutablePointer<Int8>) {
        let recip: Float = st == 0 ? 0 : 1 / st
        let scale = recip * 127
        var c = 0
        if scale.isFinite {
            // Clamping first changes nothing (+-127 are integers); adding
            // 1.5 * 2^23 then rounds to the nearest integer, ties to even,
            // leaving it as the low byte of the bit pattern.
            let sv = SIMD8<Float>(repeating: scale), magic = SIMD8<Float>(repeating: 12_582_912)
            let hi = SIMD8<Float>(repeating: 127), lo = -hi
            let bytes = UnsafeMutableRawPointer(o).assumingMemoryBound(to: UInt8.self)
            while c + 8 <= cols {
                var v = E.load8(row, c) * sv
                v.replace(with: hi, where: v .> hi)
                v.replace(with: lo, where: v .< lo)
                CodeSearch.storeBytes(unsafeBitCast(v + magic, to: SIMD8<UInt32>.self), bytes + c)
                c += 8
            }
            while c < cols {
                let v = (E.load(row, c) * scale).rounded(.toNearestOrEven)
                o[c] = Int8(Swift.max(-127, Swift.min(127, v)))
                c += 1
            }
        } else {
            while c < cols {
                let v = (E.load(row, c) / st * 127).rounded(.toNearestOrEven)
                o[c] = Int8(Swift.max(-127, Swift.min(127, v)))
                c += 1
            }
        }
    }

    /// out = (A * row_stats[r]) * (1/127) in float32, stored as `dtype`.
    public static func dequantize(_ A: UnsafePointer<Int8>, rows: Int, cols: Int, rowStats: UnsafePointer<Float>,
                                  out: UnsafeMutableRawPointer, dtype: DType) throws(QembedError) {
        try withFloatElement(dtype) { (e) throws(QembedError) in
            dequantize(e, A, rows: rows, cols: cols, rowStats: rowStats, out: out)
        }
    }

    static func dequantize<E: FloatElement>(_ e: E.Type, _ A: UnsafePointer<Int8>, rows: Int, cols: Int,
                                            rowStats: UnsafePointer<Float>, out: UnsafeMutableRawPointer) {
        let dst = out.assumingMemoryBound(to: E.Storage.self)
        let streaming = StreamedOutput.streams(bytes: rows * cols * MemoryLayout<E.Storage>.stride)
        Parallel.forEachChunk(rows, grain: max(1, 16384 / max(cols, 1))) { range in
            StreamedOutput.write(dst, range.lowerBound * cols ..< range.upperBound * cols, streaming: streaming) { from, count, o in
                forEachBlockRun(from, count, blocksize: cols) { r, i, stop in
                    let s = rowStats[r]
                    for j in i..<stop { E.store(Float(A[j]) * s * inv127, o, j - from) }
                }
            }
        }
    }
}

/// Nested (double) quantization of absmax statistics.
public enum Statistics {
    /// offset = mean(absmax) (double accumulation); absmax - offset is
    /// blockwise-quantized with the signed dynamic map.
    public static func quantize(_ absmax: UnsafePointer<Float>, count: Int, nestedBlocksize: Int,
                                qabsmax: UnsafeMutablePointer<UInt8>, nestedAbsmax: UnsafeMutablePointer<Float>) throws(QembedError) -> Float {
        var sum = 0.0
        for i in 0..<count {
            guard absmax[i].isFinite else {
                throw QembedError(.nonFinite, "absmax[\(i)] is \(absmax[i]) (inputs must be finite)")
            }
            sum += Double(absmax[i])
        }
        let offset = Float(sum / Double(count))
        let centered = UnsafeMutablePointer<Float>.allocate(capacity: count)
        defer { centered.deallocate() }
        for i in 0..<count { centered[i] = absmax[i] - offset }
        try Blockwise8.quantize(centered, dtype: .f32, n: count, search: .signedDynamic,
                                blocksize: nestedBlocksize, out: qabsmax, absmax: nestedAbsmax)
        return offset
    }

    /// absmax[i] = code[q[i]] * nested_absmax[i / nested_blocksize] + offset.
    public static func dequantize(_ q: UnsafePointer<UInt8>, count: Int, nestedAbsmax: UnsafePointer<Float>,
                                  code: UnsafePointer<Float>, nestedBlocksize: Int, offset: Float,
                                  absmax: UnsafeMutablePointer<Float>) {
        for i in 0..<count { absmax[i] = code[Int(q[i])] * nestedAbsmax[i / nestedBlocksize] + offset }
    }
}
