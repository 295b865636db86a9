import CQembedSIMD
/// Scoring queries against every row of a table: the score matrix, or the
/// top k rows per query without it.
///
/// Summation order (the definition; identical on every tier, thread count
/// and number of queries): products rounded to float32, added in 8 lanes
/// (lane l takes j = l, l + 8, ...), lanes combined as
/// ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)). Rows are decoded into
/// zero-padded float32 tiles, so a padded lane adds +0.
public enum ScoreMetric: Int32, Sendable, CaseIterable {
    case dot = 0, cosine = 1
}

public enum Scoring {
    /// Rows per tile: about 16 KiB of float32, at least 4.
    static func tileRows(_ stride: Int) -> Int { max(4, 4096 / stride) & ~1 }

    @inline(__always) static func laneSum(_ a: SIMD8<Float>) -> Float {
        let h = a.lowHalf + a.highHalf
        let q = h.lowHalf + h.highHalf
        return q[0] + q[1]
    }

    @inline(__always) static func load8(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
        UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
    }

    /// The dot products of one query with 4 rows.
    @inline(__always) static func dot1x4(_ q: UnsafePointer<Float>, _ r: UnsafePointer<Float>, _ stride: Int) -> SIMD4<Float> {
        var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
        var j = 0
        while j < stride {
            let x = load8(q + j)
            a0 += x * load8(r + j); a1 += x * load8(r + stride + j)
            a2 += x * load8(r + 2 * stride + j); a3 += x * load8(r + 3 * stride + j)
            j += 8
        }
        return SIMD4(laneSum(a0), laneSum(a1), laneSum(a2), laneSum(a3))
    }

    /// The dot products of 4 queries (q0..q3, stride apart) with 2 rows.
    @inline(__always) static func dot4x2(_ q: UnsafePointer<Float>, _ r: UnsafePointer<Float>, _ stride: Int,
                                         _ out: UnsafeMutablePointer<Float>, _ outStride: Int) {
        var a00 = SIMD8<Float>(), a01 = SIMD8<Float>(), a10 = SIMD8<Float>(), a11 = SIMD8<Float>()
        var a20 = SIMD8<Float>(), a21 = SIMD8<Float>(), a30 = SIMD8<Float>(), a31 = SIMD8<Float>()
        var j = 0
        while j < stride {
            let r0 = load8(r + j), r1 = load8(r + stride + j)
            let q0 = load8(q + j), q1 = load8(q + stride + j), q2 = load8(q + 2 * stride + j), q3 = load8(q + 3 * stride + j)
            a00 += q0 * r0; a01 += q0 * r1
            a10 += q1 * r0; a11 += q1 * r1
            a20 += q2 * r0; a21 += q2 * r1
            a30 += q3 * r0; a31 += q3 * r1
            j += 8
        }
        out[0] = laneSum(a00); out[1] = laneSum(a01)
        out[outStride] = laneSum(a10); out[outStride + 1] = laneSum(a11)
        out[2 * outStride] = laneSum(a20); out[2 * outStride + 1] = laneSum(a21)
        out[3 * outStride] = laneSum(a30); out[3 * outStride + 1] = laneSum(a31)
    }

    /// s[qi * ns + r] = <query qi, row r> for nq queries (padded to a
    /// multiple of 4 with zero rows) and nr rows (even), all `stride` floats.
    static func dotTile(_ q: UnsafePointer<Float>, nq: Int, _ rows: UnsafePointer<Float>, nr: Int, stride: Int,
                        _ s: UnsafeMutablePointer<Float>, ns: Int) {
        if nq == 1 {
            var r = 0
            while r + 4 <= nr {
                let v = dot1x4(q, rows + r * stride, stride)
                s[r] = v[0]; s[r + 1] = v[1]; s[r + 2] = v[2]; s[r + 3] = v[3]
                r += 4
            }
            while r < nr {  // the same lanes, one row at a time
                var a = SIMD8<Float>(), j = 0
                while j < stride { a += load8(q + j) * load8(rows + r * stride + j); j += 8 }
                s[r] = laneSum(a)
                r += 1
            }
            return
        }
        var qi = 0
        while qi < nq {
            var r = 0
            while r < nr {
                dot4x2(q + qi * stride, rows + r * stride, stride, s + qi * ns + r, ns)
                r += 2
            }
            qi += 4
        }
    }
}

/// The queries, padded: nq4 x stride float32 (rows beyond nq are zero), and
/// for cosine their clamped norms.
struct ScoreQueries {
    let buffer: AlignedBuffer
    let nq: Int, nq4: Int, stride: Int
    var norms: [Float] = []
    var ptr: UnsafePointer<Float> { UnsafePointer(buffer.floats()) }

    init(_ queries: UnsafeRawPointer, dtype: DType, count nq: Int, dim: Int, metric: ScoreMetric) throws(QembedError) {
        guard dtype.isFloat else { throw .unsupported("query_dtype: \(dtype.name) is not a float type (use f32, f16 or bf16)") }
        let total = try checkedMul(nq, dim, "num_queries x embedding_dim")
        _ = try withFloatElement(dtype) { (e) throws(QembedError) in try checkFinite(e, queries, total, argument: "queries") }
        self.nq = nq
        nq4 = nq == 1 ? 1 : (nq + 3) & ~3
        stride = (dim + 7) & ~7
        buffer = try AlignedBuffer(byteCount: try checkedMul(nq4, stride * 4, "queries bytes"), zeroed: true)
        let b = buffer.floats()
        for i in 0..<nq { loadFloats(queries + i * dim * dtype.size, dtype, dim, b + i * stride) }
        if metric == .cosine {
            norms = (0..<nq).map { i in Scoring.clampedNorm(UnsafePointer(b + i * stride), stride) }
        }
    }
}

extension Scoring {
    /// max(sqrt(<x, x>), 1e-8) with the scoring order.
    static func clampedNorm(_ x: UnsafePointer<Float>, _ stride: Int) -> Float {
        var a = SIMD8<Float>(), j = 0
        while j < stride { let v = load8(x + j); a += v * v; j += 8 }
        return max(laneSum(a).squareRoot(), 1e-8)
    }

    /// Calls body(part, r0, n, ns, scores) for the row tiles of `rows` on all
    /// threads (part < threads, one thread each): rows
    /// r0..<r0+n, decoded into a zero-padded tile, scores[qi * ns + r].
    static func forEachTile<R: BagRowSource>(_ rows: R, count: Int, _ q: ScoreQueries, metric: ScoreMetric, threads: Int,
                                             direct out: UnsafeMutablePointer<Float>? = nil,
                                             _ body: (_ part: Int, _ r0: Int, _ n: Int, _ ns: Int, _ scores: UnsafeMutablePointer<Float>) -> Void) {
        let stride = q.stride
        // AVX-512: rows are paired in one tile (qembed_score.h), two per
        // register, in tiles of a multiple of 8 rows (4 pairs per block).
        let wide = qembed__avx512_enabled() != 0
        let t = wide ? max(8, (6144 / stride) & ~7) : tileRows(stride)
        let tiles = ceilDiv(count, t)
        let parts = min(threads, max(1, tiles * t * stride * max(1, q.nq) / 65536), tiles)
        Parallel.forEachChunk(parts, grain: 1) { pr in
            // wide: tile holds the two rows being paired, rowNorms the tile's norms
            let tileCount = wide ? 2 * stride : t * stride
            let tile = UnsafeMutablePointer<Float>.allocate(capacity: tileCount)
            let paired = wide ? UnsafeMutablePointer<Float>.allocate(capacity: t * stride) : nil
            let rowNorms = UnsafeMutablePointer<Float>.allocate(capacity: t)
            let s = UnsafeMutablePointer<Float>.allocate(capacity: q.nq4 * t)
            defer { tile.deallocate(); paired?.deallocate(); rowNorms.deallocate(); s.deallocate() }
            tile.initialize(repeating: 0, count: tileCount)
            for part in pr {
                let lo = tiles * part / parts, hi = tiles * (part + 1) / parts
                for ti in lo..<hi {
                    let r0 = ti * t, n = min(t, count - r0)
                    // With `out`, whole tiles (an even number of rows, every
                    // query a real one) are scored in place: out[qi * count + r].
                    let inPlace = out != nil && q.nq4 == q.nq && (q.nq == 1 || n % 2 == 0)
                    let dst = inPlace ? out! + r0 : s
                    // One query over int8 / 4-bit rows: the AVX-512 kernel
                    // decodes and multiplies in registers, no tile.
                    if wide && q.nq4 == 1 && metric == .dot, var k = rows.bagKernelRows,
                       qembed__score512_rows(&k, r0, n, q.ptr, dst) != 0 {
                        if !inPlace { body(part, r0, n, n, s) }
                        continue
                    }
                    // One query over a source with a fused kernel: the same
                    // sums straight from the table, no tile.
                    if q.nq4 == 1 && metric == .dot, rows.dots(r0, n, q.ptr, s) {
                        body(part, r0, n, n, s)
                        continue
                    }
                    // One query over float32 rows of a multiple of 8: the
                    // table itself is the tile (memory-bound: no copy).
                    if q.nq4 == 1, let base = rows.floatRows {
                        let t0 = base + r0 * stride
                        dotTile(q.ptr, nq: 1, t0, nr: n, stride: stride, dst, ns: n)
                        if metric == .cosine {
                            for r in 0..<n { dst[r] /= q.norms[0] * clampedNorm(t0 + r * stride, stride) }
                        }
                        if !inPlace { body(part, r0, n, n, s) }
                        continue
                    }
                    let nr: Int
                    if let paired {
                        nr = (n + 1) & ~1
                        let direct = rows.floatRows.map { UnsafeMutablePointer(mutating: $0) }
                        for p in 0..<nr / 2 {
                            let full = 2 * p + 1 < n
                            // float32 rows pair straight from the table
                            let a = direct.map { $0 + (r0 + 2 * p) * stride } ?? tile
                            let b = direct.map { $0 + (r0 + 2 * p + 1) * stride } ?? tile + stride
                            if direct == nil {
                                rows.load(r0 + 2 * p, a)
                                if full { rows.load(r0 + 2 * p + 1, b) }
                            }
                            if metric == .cosine {
                                rowNorms[2 * p] = clampedNorm(UnsafePointer(a), stride)
                                if full { rowNorms[2 * p + 1] = clampedNorm(UnsafePointer(b), stride) }
                            }
                            qembed__score_pair_rows(a, full ? b : nil, stride, paired + 2 * p * stride)
                        }
                        if inPlace {
                            qembed__score512_tile(q.ptr, q.nq4, paired, nr, stride, dst, count)
                            if metric == .cosine {
                                for qi in 0..<q.nq { for r in 0..<n { dst[qi * count + r] /= q.norms[qi] * rowNorms[r] } }
                            }
                            continue
                        }
                        qembed__score512_tile(q.ptr, q.nq4, paired, nr, stride, s, nr)
                    } else {
                        for r in 0..<n { rows.load(r0 + r, tile + r * stride) }
                        if n % 2 == 1 && q.nq4 > 1 { (tile + n * stride).update(repeating: 0, count: stride) }
                        nr = q.nq4 > 1 ? (n + 1) & ~1 : n
                        dotTile(q.ptr, nq: q.nq4, UnsafePointer(tile), nr: nr, stride: stride, s, ns: nr)
                        if metric == .cosine {
                            for r in 0..<n { rowNorms[r] = clampedNorm(UnsafePointer(tile + r * stride), stride) }
                        }
                    }
                    if metric == .cosine {
                        for r in 0..<n {
                            for qi in 0..<q.nq { s[qi * nr + r] /= q.norms[qi] * rowNorms[r] }
                        }
                    }
                    body(part, r0, n, nr, s)
                }
            }
        }
    }

    /// scores (nq x count) of every query against every row.
    static func scores<R: BagRowSource>(_ rows: R, count: Int, _ q: ScoreQueries, metric: ScoreMetric, out: UnsafeMutablePointer<Float>) {
        forEachTile(rows, count: count, q, metric: metric, threads: Parallel.threadCount, direct: out) { _, r0, n, ns, s in
            for qi in 0..<q.nq { (out + qi * count + r0).update(from: s + qi * ns, count: n) }
        }
    }

    /// Ranks (score, index) pairs: higher score first, NaN last, ties to the lower index.
    @inline(__always) static func before(_ s1: Float, _ i1: Int, _ s2: Float, _ i2: Int) -> Bool {
        if s1.isNaN { return s2.isNaN && i1 < i2 }
        if s2.isNaN { return true }
        return s1 > s2 || (s1 == s2 && i1 < i2)
    }

    /// The k best rows per query, sorted (see `before`).
    static func topk<R: BagRowSource>(_ rows: R, count: Int, _ q: ScoreQueries, metric: ScoreMetric, k: Int,
                                      indices: UnsafeMutablePointer<Int64>, scores: UnsafeMutablePointer<Float>) {
        let parts = Parallel.threadCount
        // One heap of k per (part, query); the root is the worst kept pair.
        let slots = parts * q.nq * k
        let hs = UnsafeMutablePointer<Float>.allocate(capacity: slots)
        let hi = UnsafeMutablePointer<Int>.allocate(capacity: slots)
        var fill = [Int](repeating: 0, count: parts * q.nq)
        defer { hs.deallocate(); hi.deallocate() }
        fill.withUnsafeMutableBufferPointer { fb in
            let f = fb.baseAddress!
            forEachTile(rows, count: count, q, metric: metric, threads: parts) { part, r0, n, ns, s in
                for qi in 0..<q.nq {
                    let h = (part * q.nq + qi)
                    let bs = hs + h * k, bi = hi + h * k
                    for r in 0..<n {
                        let sc = s[qi * ns + r], idx = r0 + r
                        if f[h] < k {
                            // Sift up a new leaf.
                            var c = f[h]; f[h] += 1
                            while c > 0 {
                                let p = (c - 1) / 2
                                if before(bs[p], bi[p], sc, idx) { bs[c] = bs[p]; bi[c] = bi[p]; c = p } else { break }
                            }
                            bs[c] = sc; bi[c] = idx
                        } else if before(sc, idx, bs[0], bi[0]) {
                            siftDown(bs, bi, k, sc, idx)
                        }
                    }
                }
            }
        }
        // Merge the parts' heaps of each query and sort.
        for qi in 0..<q.nq {
            var cand: [(Float, Int)] = []
            cand.reserveCapacity(parts * k)
            for part in 0..<parts {
                let h = part * q.nq + qi
                for t in 0..<fill[h] { cand.append((hs[h * k + t], hi[h * k + t])) }
            }
            cand.sort { before($0.0, $0.1, $1.0, $1.1) }
            for t in 0..<k { scores[qi * k + t] = cand[t].0; indices[qi * k + t] = Int64(cand[t].1) }
        }
    }

    /// Replaces the root of a full heap (worst at the root) by (s, i).
    @inline(__always) static func siftDown(_ bs: UnsafeMutablePointer<Float>, _ bi: UnsafeMutablePointer<Int>, _ k: Int, _ s: Float, _ i: Int) {
        var c = 0
        while true {
            let l = 2 * c + 1
            if l >= k { break }
            var w = l
            let r = l + 1
            if r < k && before(bs[l], bi[l], bs[r], bi[r]) { w = r }  // the worse child
            if before(bs[w], bi[w], s, i) { break }
            bs[c] = bs[w]; bi[c] = bi[w]; c = w
        }
        bs[c] = s; bi[c] = i
    }
}
