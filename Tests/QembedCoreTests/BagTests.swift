import XCTest
import CQembedSIMD
@testable import QembedCore

/// Bags and scoring in the core against scalar references written from the
/// definitions (Bags.swift, Scoring.swift), on every table kind, and the AVX2
/// 4-bit kernel against the portable path.
final class BagTests: XCTestCase {
    /// A float layer and its three quantized tables over one random table
    /// whose rows span several orders of magnitude.
    func tables(rows: Int, dim: Int, seed: UInt64) throws -> (Embedding, [QuantizedEmbedding]) {
        var rng = Rng(seed)
        var w: [Float] = []
        for r in 0..<rows { w += rng.floats(dim, scale: Float(pow(10.0, Double(r % 5) - 2))) }
        let e = try w.withUnsafeBytes { wb in
            try Embedding(EmbeddingConfig(numEmbeddings: rows, embeddingDim: dim), pretrained: wb.baseAddress!)
        }
        let q = [try QuantizedEmbedding.from(e, kind: .int8),
                 try QuantizedEmbedding.from(e, kind: .nf4, blocksize: 64),
                 try QuantizedEmbedding.from(e, kind: .fp4, blocksize: 32, compressStatistics: true)]
        return (e, q)
    }

    /// Every row of a table as float32 (the values bags and scores read).
    func allRows(_ e: Embedding) -> [Float] { (0..<e.weight.numel).map { e.weight.value($0) } }
    func allRows(_ q: QuantizedEmbedding) throws -> [Float] {
        let idx = (0..<Int64(q.numEmbeddings)).map { $0 }
        var out = [Float](repeating: 0, count: q.numel)
        try idx.withUnsafeBytes { ib in
            try out.withUnsafeMutableBytes { ob in
                try q.forward(try Indices(ib.baseAddress!, dtype: .i64, count: idx.count), out: ob.baseAddress!, outDtype: .f32)
            }
        }
        return out
    }

    /// The reference reduction: index order, float32, as Bags documents.
    func referenceBags(_ table: [Float], dim: Int, idx: [Int64], ranges: [Range<Int>], weights: [Float]?,
                       mode: Bags.Mode, pad: Int?) -> [Float] {
        var out: [Float] = []
        for r in ranges {
            var acc = [Float](repeating: 0, count: dim)
            var n = 0
            for k in r where Int(idx[k]) != pad {
                let row = Int(idx[k]) * dim
                for j in 0..<dim {
                    let v = table[row + j]
                    switch mode {
                    case .sum: acc[j] += weights.map { v * $0[k] } ?? v
                    case .mean: acc[j] += v
                    case .max: if n == 0 || v > acc[j] { acc[j] = v }
                    }
                }
                n += 1
            }
            if mode == .mean && n > 1 { acc = acc.map { $0 / Float(n) } }
            out += acc
        }
        return out
    }

    func testBagsEqualTheReferenceOnEveryTable() throws {
        // 70: partial vectors (float/int8 kernel masks, 4-bit portable path);
        // 144: two kernel tiles; 48: one short tile.
        for dim in [70, 144, 48] { try checkBagsAgainstReference(dim: dim) }
    }

    /// The AVX-512 bag kernel (qembed_bag.h) against the portable path, bit
    /// for bit, on int32 and int64 indices.
    func testAVX512BagKernelEqualsPortablePath() throws {
        var probe = qembed__bag_rows(kind: Int32(QEMBED__BAG_F32), dim: 16, data: UnsafeRawPointer(bitPattern: 64)!, scales: nil)
        guard qembed__bag512_supported(&probe) != 0 else { throw XCTSkip("no AVX-512 here (or QEMBED_CPU forces a lower tier)") }
        defer { qembed__avx512_set_enabled(1) }
        try checkBagKernel(dims: [16, 64, 128, 144, 384, 70], on: { qembed__avx512_set_enabled(1) }, off: { qembed__avx512_set_enabled(0) })
    }

    /// The AVX2 bag kernel (qembed_bag_avx2.c, used where AVX-512 is not)
    /// against the portable path with AVX2 off (4-bit rows by the scalar
    /// rule), bit for bit: tiles of 8, 4, 2 and 1 vectors.
    func testAVX2BagKernelEqualsPortablePath() throws {
        qembed__avx512_set_enabled(0)
        defer { qembed__avx512_set_enabled(1); qembed__avx2_set_enabled(1) }
        var probe = qembed__bag_rows(kind: Int32(QEMBED__BAG_F32), dim: 16, data: UnsafeRawPointer(bitPattern: 64)!, scales: nil)
        guard qembed__bag256_supported(&probe) != 0 else { throw XCTSkip("no AVX2 here (or QEMBED_CPU=baseline)") }
        try checkBagKernel(dims: [8, 24, 40, 64, 128, 136, 384, 70], on: { qembed__avx2_set_enabled(1) }, off: { qembed__avx2_set_enabled(0) })
    }

    func checkBagKernel(dims: [Int], on: () -> Void, off: () -> Void) throws {
        for dim in dims {
            let rows = 211
            let (e, qs) = try tables(rows: rows, dim: dim, seed: UInt64(dim) + 40)
            var rng = Rng(UInt64(dim))
            let idx64 = (0..<900).map { _ in Int64(rng.next() % UInt64(rows)) }
            let idx32 = idx64.map { Int32($0) }
            let weights = (0..<900).map { _ in rng.normal() }
            for mode in Bags.Mode.allCases {
                for (pad, useWeights, is64) in [(nil, false, true), (Int(idx64[5]), false, false), (nil, true, false), (Int(idx64[9]), true, true)] {
                    if useWeights && mode != .sum { continue }
                    func run(_ t: (Bags, UnsafeMutableRawPointer) throws -> Void) throws -> [Float] {
                        var got = [Float](repeating: .nan, count: 30 * dim)
                        try idx64.withUnsafeBytes { i64 in
                            try idx32.withUnsafeBytes { i32 in
                                try weights.withUnsafeBytes { wb in
                                    let ind = is64 ? try Indices(i64.baseAddress!, dtype: .i64, count: 900) : try Indices(i32.baseAddress!, dtype: .i32, count: 900)
                                    let b = try Bags(indices: ind, offsets: nil, numOffsets: 0, includeLastOffset: false, numBags: 30,
                                                     weights: useWeights ? wb.baseAddress! : nil, weightsDtype: .f32, mode: mode,
                                                     paddingIdx: pad, rows: rows)
                                    try got.withUnsafeMutableBytes { try t(b, $0.baseAddress!) }
                                }
                            }
                        }
                        return got
                    }
                    let runs: [(String, (Bags, UnsafeMutableRawPointer) throws -> Void)] =
                        [("f32", { b, o in try e.bagForward(b, out: o, outDtype: .f32) })] +
                        qs.map { q in (q.kind.name, { b, o in try q.bagForward(b, out: o, outDtype: .f32) }) }
                    for (name, t) in runs {
                        on()
                        let fast = try run(t)
                        off()
                        let slow = try run(t)
                        on()
                        XCTAssertEqual(fast.map(\.bitPattern), slow.map(\.bitPattern),
                                       "\(name) dim \(dim) \(mode.name) pad \(String(describing: pad)) weights \(useWeights) i64 \(is64)")
                    }
                }
            }
        }
    }

    func checkBagsAgainstReference(dim: Int) throws {
        let rows = 300
        let (e, qs) = try tables(rows: rows, dim: dim, seed: 3)
        var rng = Rng(9)
        let idx = (0..<500).map { _ in Int64(rng.next() % UInt64(rows)) }
        var offsets: [Int64] = [0]
        while offsets.count < 40 { offsets.append(min(500, offsets.last! + Int64(rng.next() % 25))) }  // empty bags too
        let weights = (0..<500).map { _ in rng.normal() }
        for includeLast in [false, true] {
            let nb = includeLast ? offsets.count - 1 : offsets.count
            let ranges = (0..<nb).map { b in Int(offsets[b])..<(b + 1 < offsets.count ? Int(offsets[b + 1]) : 500) }
            for mode in Bags.Mode.allCases {
                for pad in [nil, Int(idx[3])] {
                    for useWeights in mode == .sum ? [false, true] : [false] {
                        let sources: [(String, [Float], (Bags, UnsafeMutableRawPointer) throws -> Void)] =
                            [("f32", allRows(e), { b, o in try e.bagForward(b, out: o, outDtype: .f32) })] +
                            (try qs.map { q in (q.kind.name, try allRows(q), { b, o in try q.bagForward(b, out: o, outDtype: .f32) }) })
                        for (name, table, run) in sources {
                            let want = referenceBags(table, dim: dim, idx: idx, ranges: ranges, weights: useWeights ? weights : nil,
                                                     mode: mode, pad: pad)
                            var got = [Float](repeating: .nan, count: nb * dim)
                            try idx.withUnsafeBytes { ib in
                                try offsets.withUnsafeBytes { ob in
                                    try weights.withUnsafeBytes { wb in
                                        let b = try Bags(indices: try Indices(ib.baseAddress!, dtype: .i64, count: idx.count),
                                                         offsets: ob.baseAddress!, numOffsets: offsets.count, includeLastOffset: includeLast,
                                                         numBags: 0, weights: useWeights ? wb.baseAddress! : nil, weightsDtype: .f32,
                                                         mode: mode, paddingIdx: pad, rows: rows)
                                        try got.withUnsafeMutableBytes { try run(b, $0.baseAddress!) }
                                    }
                                }
                            }
                            XCTAssertEqual(got, want, "dim \(dim) \(name) \(mode.name) pad \(String(describing: pad)) weights \(useWeights) last \(includeLast)")
                        }
                    }
                }
            }
        }
    }

    func testAVX2FourBitKernelEqualsPortablePath() throws {
        guard qembed__avx2_enabled() != 0 else { throw XCTSkip("no AVX2 here (or QEMBED_CPU=baseline)") }
        defer { qembed__avx2_set_enabled(1) }
        // Odd dims make rows start on odd nibbles; blocks straddle rows.
        for (dim, bs) in [(70, 64), (33, 32), (128, 64), (5, 64)] {
            let (_, qs) = try tables(rows: 97, dim: dim, seed: UInt64(dim))
            for q in qs where q.kind != .int8 || dim == 70 {
                _ = bs
                let fast = try allRows(q)
                var rng = Rng(5)
                let queries = rng.floats(3 * dim, scale: 1)
                var sFast = [Float](repeating: 0, count: 3 * q.numEmbeddings), sSlow = sFast
                try queries.withUnsafeBytes { qb in try sFast.withUnsafeMutableBufferPointer { try q.score(qb.baseAddress!, dtype: .f32, count: 3, metric: .dot, out: $0.baseAddress!) } }
                qembed__avx2_set_enabled(0)
                let slow = try allRows(q)
                try queries.withUnsafeBytes { qb in try sSlow.withUnsafeMutableBufferPointer { try q.score(qb.baseAddress!, dtype: .f32, count: 3, metric: .dot, out: $0.baseAddress!) } }
                qembed__avx2_set_enabled(1)
                XCTAssertEqual(fast.map(\.bitPattern), slow.map(\.bitPattern), "\(q.kind.name) dim \(dim)")
                XCTAssertEqual(sFast.map(\.bitPattern), sSlow.map(\.bitPattern), "\(q.kind.name) dim \(dim) scores")
            }
        }
    }

    /// The documented order: 8 lanes, products rounded, lanes combined
    /// ((0+4)+(2+6))+((1+5)+(3+7)).
    func referenceDot(_ a: ArraySlice<Float>, _ b: ArraySlice<Float>) -> Float {
        var lane = [Float](repeating: 0, count: 8)
        for (t, (x, y)) in zip(a, b).enumerated() { let p = x * y; lane[t % 8] = lane[t % 8] + p }
        let s04 = lane[0] + lane[4], s26 = lane[2] + lane[6], s15 = lane[1] + lane[5], s37 = lane[3] + lane[7]
        return (s04 + s26) + (s15 + s37)
    }

    func testScoresFollowTheDocumentedOrderAndTopkRanksThem() throws {
        // Both forms of the kernel where the CPU has AVX-512 (paired rows), the portable one otherwise.
        defer { qembed__avx512_set_enabled(1) }
        for wide: Int32 in [1, 0] {
            qembed__avx512_set_enabled(wide)
            try checkScores()
        }
    }

    func checkScores() throws {
        for (rows, dim) in [(203, 70), (64, 8), (31, 3), (45, 384), (1100, 16)] {  // 1100 x 16: several tiles, rows narrower than a block
            let (e, qs) = try tables(rows: rows, dim: dim, seed: UInt64(rows))
            var rng = Rng(11)
            for nq in [1, 5, 8] {
                let queries = rng.floats(nq * dim, scale: 2)
                let sources: [(String, [Float], (UnsafeRawPointer, ScoreMetric, UnsafeMutablePointer<Float>) throws -> Void,
                               (UnsafeRawPointer, Int, UnsafeMutablePointer<Int64>, UnsafeMutablePointer<Float>) throws -> Void)] =
                    [("f32", allRows(e), { try e.score($0, dtype: .f32, count: nq, metric: $1, out: $2) },
                      { try e.topk($0, dtype: .f32, count: nq, metric: .dot, k: $1, indices: $2, scores: $3) })] +
                    (try qs.map { q in (q.kind.name, try allRows(q), { try q.score($0, dtype: .f32, count: nq, metric: $1, out: $2) },
                                        { try q.topk($0, dtype: .f32, count: nq, metric: .dot, k: $1, indices: $2, scores: $3) }) })
                for (name, table, score, topk) in sources {
                    var s = [Float](repeating: 0, count: nq * rows), c = s
                    try queries.withUnsafeBytes { qb in
                        try s.withUnsafeMutableBufferPointer { try score(qb.baseAddress!, .dot, $0.baseAddress!) }
                        try c.withUnsafeMutableBufferPointer { try score(qb.baseAddress!, .cosine, $0.baseAddress!) }
                    }
                    for i in 0..<nq {
                        let q = queries[(i * dim)..<((i + 1) * dim)]
                        let qn = max(referenceDot(q, q).squareRoot(), 1e-8)
                        for r in 0..<rows {
                            let w = table[(r * dim)..<((r + 1) * dim)]
                            let d = referenceDot(q, w)
                            XCTAssertEqual(s[i * rows + r].bitPattern, d.bitPattern, "\(name) q\(i) r\(r)")
                            let cs = d / (qn * max(referenceDot(w, w).squareRoot(), 1e-8))
                            XCTAssertEqual(c[i * rows + r].bitPattern, cs.bitPattern, "\(name) cosine q\(i) r\(r)")
                        }
                    }
                    let k = min(7, rows)
                    var ti = [Int64](repeating: -1, count: nq * k), ts = [Float](repeating: 0, count: nq * k)
                    try queries.withUnsafeBytes { qb in
                        try ti.withUnsafeMutableBufferPointer { ib in try ts.withUnsafeMutableBufferPointer { try topk(qb.baseAddress!, k, ib.baseAddress!, $0.baseAddress!) } }
                    }
                    for i in 0..<nq {
                        let order = (0..<rows).sorted { a, b in
                            let x = s[i * rows + a], y = s[i * rows + b]
                            return x > y || (x == y && a < b)
                        }
                        XCTAssertEqual(ti[(i * k)..<((i + 1) * k)].map { Int($0) }, Array(order.prefix(k)), "\(name) top-k q\(i)")
                        XCTAssertEqual(ts[(i * k)..<((i + 1) * k)].map(\.bitPattern), order.prefix(k).map { s[i * rows + $0].bitPattern })
                    }
                }
            }
        }
    }

    func testMaxBackwardRoutesToTheArgmaxRow() throws {
        let w: [Float] = [1, 5, 3,
                          4, 2, 3,
                          0, 0, 9]
        let e = try w.withUnsafeBytes { try Embedding(EmbeddingConfig(numEmbeddings: 3, embeddingDim: 3), pretrained: $0.baseAddress!) }
        let idx: [Int64] = [0, 1, 1, 2]   // bag 0: rows 0, 1 (tie on j=2 goes to row 0); bag 1: rows 1, 2
        let off: [Int64] = [0, 2]
        let g: [Float] = [10, 20, 30, 1, 2, 3]
        try idx.withUnsafeBytes { ib in
            try off.withUnsafeBytes { ob in
                let b = try Bags(indices: try Indices(ib.baseAddress!, dtype: .i64, count: 4), offsets: ob.baseAddress!, numOffsets: 2,
                                 includeLastOffset: false, numBags: 0, weights: nil, weightsDtype: .f32, mode: .max, paddingIdx: nil, rows: 3)
                try g.withUnsafeBytes { try e.bagBackward(b, gradOutput: $0.baseAddress!, gradDtype: .f32, gradWeights: nil) }
            }
        }
        let grad = Array(UnsafeBufferPointer(start: e.weight.grad!.floats(), count: 9))
        XCTAssertEqual(grad, [0, 20, 30,
                              11, 2, 0,
                              0, 0, 3])
    }

    func testBadBagsAreRefused() throws {
        let idx: [Int64] = [0, 1, 2, 3]
        func bags(_ off: [Int64], last: Bool = false, numBags: Int = 0, mode: Bags.Mode = .sum, weights: [Float]? = nil,
                  pad: Int? = nil, rows: Int = 4) throws {
            try idx.withUnsafeBytes { ib in
                try off.withUnsafeBytes { ob in
                    try (weights ?? []).withUnsafeBytes { wb in
                        _ = try Bags(indices: try Indices(ib.baseAddress!, dtype: .i64, count: 4), offsets: off.isEmpty && numBags > 0 ? nil : ob.baseAddress!,
                                     numOffsets: off.count, includeLastOffset: last, numBags: numBags,
                                     weights: weights == nil ? nil : wb.baseAddress!, weightsDtype: .f32, mode: mode, paddingIdx: pad, rows: rows)
                    }
                }
            }
        }
        func refused(_ status: QembedError.Status, _ text: String, _ body: () throws -> Void) {
            XCTAssertThrowsError(try body()) { err in
                let e = err as! QembedError
                XCTAssertEqual(e.status, status, e.message)
                XCTAssertTrue(e.message.contains(text), e.message)
            }
        }
        XCTAssertNoThrow(try bags([0, 2]))
        refused(.outOfRange, "offsets[0]") { try bags([1, 2]) }
        refused(.outOfRange, "non-decreasing") { try bags([0, 3, 2]) }
        refused(.outOfRange, "greater than") { try bags([0, 5]) }
        refused(.shape, "multiple") { try bags([], numBags: 3) }
        refused(.invalidArgument, "num_bags") { try bags([0], numBags: 2) }
        refused(.invalidArgument, "per_sample_weights") { try bags([0], mode: .mean, weights: [1, 1, 1, 1]) }
        refused(.nonFinite, "per_sample_weights") { try bags([0], weights: [1, .nan, 1, 1]) }
        refused(.outOfRange, "indices[3]") { try bags([0], rows: 3) }
        refused(.outOfRange, "padding_idx") { try bags([0], pad: 4) }
    }
}
