import QembedCore

/// Embedding and StableEmbedding: forward, max_norm forward, backward dense
/// and sparse, on the shapes of issue #3. Bytes = rows read + written.
enum EmbeddingBench {
    static func run(quick: Bool) throws {
        Bench.header("Embedding f32, \(Parallel.threadCount) threads (bytes: rows read + rows written)")
        let shapes = quick ? [(30522, 384)] : [(30522, 384), (1_000_000, 128), (250_000, 1024)]
        for (rows, dim) in shapes {
            let e = try Embedding(EmbeddingConfig(numEmbeddings: rows, embeddingDim: dim), seed: 1)
            for count in [4096, 65536] {
                var rng = SplitMix(seed: UInt64(count))
                let idx = (0..<count).map { _ in Int64(rng.next() % UInt64(rows)) }
                let out = UnsafeMutablePointer<Float>.allocate(capacity: count * dim)
                defer { out.deallocate() }
                try idx.withUnsafeBytes { ib in
                    let ind = try Indices(ib.baseAddress!, dtype: .i64, count: count)
                    let t = try Bench.time { try e.forward(ind, out: out, outDtype: .f32) }
                    Bench.report("forward \(rows)x\(dim) n=\(count)", seconds: t, elements: count, bytes: 2 * count * dim * 4)
                }
            }
        }
        let (rows, dim, count) = (30522, 384, 65536)
        var rng = SplitMix(seed: 3)
        let idx = (0..<count).map { _ in Int64(rng.next() % UInt64(rows)) }
        let out = UnsafeMutablePointer<Float>.allocate(capacity: count * dim)
        let g = UnsafeMutablePointer<Float>.allocate(capacity: count * dim)
        defer { out.deallocate(); g.deallocate() }
        for i in 0..<(count * dim) { g[i] = Float(i % 17) * 1e-3 }
        try idx.withUnsafeBytes { ib in
            let ind = try Indices(ib.baseAddress!, dtype: .i64, count: count)
            let mn = try Embedding(EmbeddingConfig(numEmbeddings: rows, embeddingDim: dim, maxNorm: 1e-3), seed: 1)
            let t0 = try Bench.time(reps: 3) { try mn.forward(ind, out: out, outDtype: .f32) }
            Bench.report("forward max_norm \(rows)x\(dim) n=\(count)", seconds: t0, elements: count, bytes: 2 * count * dim * 4)
            for sparse in [false, true] {
                let e = try Embedding(EmbeddingConfig(numEmbeddings: rows, embeddingDim: dim, sparse: sparse), seed: 1)
                let t = try Bench.time(reps: 3) { try e.backward(ind, gradOutput: g, gradDtype: .f32) }
                Bench.report("backward \(sparse ? "sparse" : "dense") \(rows)x\(dim) n=\(count)", seconds: t, elements: count, bytes: 2 * count * dim * 4)
            }
            let s = try Embedding(EmbeddingConfig(numEmbeddings: rows, embeddingDim: dim), stable: true, seed: 1)
            let t1 = try Bench.time { try s.forward(ind, out: out, outDtype: .f32) }
            Bench.report("StableEmbedding forward \(rows)x\(dim) n=\(count)", seconds: t1, elements: count, bytes: 2 * count * dim * 4)
            let t2 = try Bench.time(reps: 3) {
                try s.forward(ind, out: out, outDtype: .f32)
                try s.backward(ind, gradOutput: g, gradDtype: .f32)
            }
            Bench.report("StableEmbedding fwd+bwd \(rows)x\(dim) n=\(count)", seconds: t2, elements: count, bytes: 4 * count * dim * 4)
        }
    }
}

struct SplitMix {
    var s: UInt64
    init(seed: UInt64) { s = seed }
    mutating func next() -> UInt64 {
        s &+= 0x9E37_79B9_7F4A_7C15
        var z = s
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
