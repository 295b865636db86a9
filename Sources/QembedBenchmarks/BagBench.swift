import QembedCore

/// EmbeddingBag and scoring: the workloads of issue #18's anchors (torch
/// F.embedding_bag and FBGEMM's row-wise quantized bags, a tied LM head,
/// faiss-style top-k search). GB/s counts table bytes read plus output bytes.
enum BagBench {
    static func run(quick: Bool) throws {
        try bags(quick: quick)
        try score(quick: quick)
    }

    /// The looked-up table bytes of one row, per table kind.
    static func rowBytes(_ q: QuantizedEmbedding?, dim: Int) -> Int {
        guard let q else { return dim * 4 }
        return q.kind == .int8 ? dim + 4 : dim / 2 + 4 * max(1, dim / q.blocksize)
    }

    static func bags(quick: Bool) throws {
        let (rows, dim, numBags, perBag) = quick ? (50_000, 128, 1024, 40) : (250_000, 128, 4096, 40)
        let count = numBags * perBag
        Bench.header("bags: \(numBags) bags of \(perBag) random rows of \(rows)x\(dim), \(Parallel.threadCount) threads")
        let e = try Embedding(EmbeddingConfig(numEmbeddings: rows, embeddingDim: dim), seed: 3)
        var rng = SplitMix(seed: 11)
        let idx = (0..<count).map { _ in Int64(rng.next() % UInt64(rows)) }
        let offsets = (0..<numBags).map { Int64($0 * perBag) }
        let weights = (0..<count).map { _ in Float(rng.next() % 1000) / 500 }
        let out = UnsafeMutablePointer<Float>.allocate(capacity: count / 5 * dim)  // room for bags of 5
        defer { out.deallocate() }
        let tables: [(String, QuantizedEmbedding?)] = [("f32", nil),
            ("int8", try QuantizedEmbedding.from(e, kind: .int8)),
            ("nf4", try QuantizedEmbedding.from(e, kind: .nf4, blocksize: 64)),
            ("nf4+nested", try QuantizedEmbedding.from(e, kind: .nf4, blocksize: 64, compressStatistics: true))]
        try idx.withUnsafeBytes { ib in
            try offsets.withUnsafeBytes { ob in
                try weights.withUnsafeBytes { wb in
                    let ind = try Indices(ib.baseAddress!, dtype: .i64, count: count)
                    for mode in Bags.Mode.allCases {
                        for (name, q) in tables {
                            if q != nil && mode == .max { continue }
                            let b = try Bags(indices: ind, offsets: ob.baseAddress!, numOffsets: numBags, includeLastOffset: false, numBags: 0,
                                             weights: nil, weightsDtype: .f32, mode: mode, paddingIdx: nil, rows: rows)
                            let t = try Bench.time {
                                if let q { try q.bagForward(b, out: out, outDtype: .f32) } else { try e.bagForward(b, out: out, outDtype: .f32) }
                            }
                            Bench.report("\(name) bag \(mode.name)", seconds: t, elements: count,
                                         bytes: count * rowBytes(q, dim: dim) + numBags * dim * 4, unit: "M rows/s")
                        }
                    }
                    // The same indices as bags of 5 (fixed length): the per-bag cost shows.
                    let small = try Bags(indices: ind, offsets: nil, numOffsets: 0, includeLastOffset: false, numBags: count / 5,
                                         weights: nil, weightsDtype: .f32, mode: .sum, paddingIdx: nil, rows: rows)
                    for (name, q) in tables {
                        let t = try Bench.time {
                            if let q { try q.bagForward(small, out: out, outDtype: .f32) } else { try e.bagForward(small, out: out, outDtype: .f32) }
                        }
                        Bench.report("\(name) bag sum, bags of 5", seconds: t, elements: count,
                                     bytes: count * rowBytes(q, dim: dim) + count / 5 * dim * 4, unit: "M rows/s")
                    }
                    let b = try Bags(indices: ind, offsets: ob.baseAddress!, numOffsets: numBags, includeLastOffset: false, numBags: 0,
                                     weights: wb.baseAddress!, weightsDtype: .f32, mode: .sum, paddingIdx: nil, rows: rows)
                    let t = try Bench.time { try e.bagForward(b, out: out, outDtype: .f32) }
                    Bench.report("f32 bag sum with per_sample_weights", seconds: t, elements: count,
                                 bytes: count * (dim * 4 + 4) + numBags * dim * 4, unit: "M rows/s")
                    let grad = randomFloats(numBags * dim, seed: 4)
                    defer { grad.deallocate() }
                    let tb = try Bench.time(reps: 3) { try e.bagBackward(b, gradOutput: grad, gradDtype: .f32, gradWeights: nil) }
                    Bench.report("f32 bag sum backward (dense grad)", seconds: tb, elements: count,
                                 bytes: count * dim * 8 + numBags * dim * 4, unit: "M rows/s")
                }
            }
        }
    }

    static func score(quick: Bool) throws {
        let (rows, dim) = quick ? (8192, 384) : (30_522, 384)
        Bench.header("scoring: queries against every row of \(rows)x\(dim) (a tied LM head), \(Parallel.threadCount) threads (GB/s of table)")
        let e = try Embedding(EmbeddingConfig(numEmbeddings: rows, embeddingDim: dim), seed: 5)
        let tables: [(String, QuantizedEmbedding?)] = [("f32", nil),
            ("int8", try QuantizedEmbedding.from(e, kind: .int8)),
            ("nf4", try QuantizedEmbedding.from(e, kind: .nf4, blocksize: 64))]
        for nq in [1, 64] {
            let queries = randomFloats(nq * dim, seed: 6)
            let out = UnsafeMutablePointer<Float>.allocate(capacity: nq * rows)
            defer { queries.deallocate(); out.deallocate() }
            for (name, q) in tables {
                let t = try Bench.time {
                    if let q { try q.score(queries, dtype: .f32, count: nq, metric: .dot, out: out) }
                    else { try e.score(queries, dtype: .f32, count: nq, metric: .dot, out: out) }
                }
                let tb = q?.tableBytes ?? rows * dim * 4
                Bench.report("\(name) score, \(nq) quer\(nq == 1 ? "y" : "ies") (\(Bench.fmt(2 * Double(nq * rows * dim) / t / 1e9, 1)) GFLOP/s)",
                             seconds: t, elements: nq * rows, bytes: tb + nq * rows * 4, unit: "M scores/s")
            }
        }
        // Top-10 search over a large int8 table (faiss IndexScalarQuantizer QT_8bit's workload).
        let (srows, sdim, nq) = quick ? (100_000, 128, 16) : (1_000_000, 128, 16)
        let w = randomFloats(srows * sdim, seed: 7)
        defer { w.deallocate() }
        let q8 = try QuantizedEmbedding.quantize(w, dtype: .f32, rows: srows, dim: sdim, kind: .int8)
        let queries = randomFloats(nq * sdim, seed: 8)
        let ind = UnsafeMutablePointer<Int64>.allocate(capacity: nq * 10)
        let sc = UnsafeMutablePointer<Float>.allocate(capacity: nq * 10)
        defer { queries.deallocate(); ind.deallocate(); sc.deallocate() }
        for n in [1, nq] {
            let t = try Bench.time(reps: 3) { try q8.topk(queries, dtype: .f32, count: n, metric: .dot, k: 10, indices: ind, scores: sc) }
            Bench.report("int8 top-10 of \(srows)x\(sdim), \(n) quer\(n == 1 ? "y" : "ies")", seconds: t, elements: n * srows,
                         bytes: q8.tableBytes, unit: "M scores/s")
        }
    }
}
