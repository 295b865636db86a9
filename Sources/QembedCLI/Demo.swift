import ArgumentParser
import QembedCore
import QembedIO
#if canImport(Glibc)
import Glibc
#endif

/// The main job: skip-gram word2vec with negative sampling on a generated
/// corpus, a StableEmbedding input table (32-bit Adam state) and a sparse
/// Embedding output table (8-bit Adam state by override), then quantization
/// of the trained table to NF4 and int8: bytes, error, neighbour accuracy,
/// speed; then LoRA over the saved NF4 table, fine-tuned on a relabelled corpus.
struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Train embeddings on a generated corpus, then quantize, save, reload and compare.")

    @Flag(name: .long, help: "A few seconds instead of about a minute.") var quick = false
    @Option(name: .long, help: "Random seed.") var seed: UInt64 = 7
    @Option(name: .long, help: "Directory for the saved files.") var outDir = "/tmp"

    func run() throws {
        let t0 = now()
        let (vocab, clusters, dim) = quick ? (2000, 20, 32) : (10000, 40, 64)
        let steps = quick ? 300 : 2500
        let batch = 1024, window = 3, negatives = 5
        print("qembed demo: skip-gram with negative sampling, \(vocab) tokens in \(clusters) hidden clusters, dim \(dim), \(Parallel.threadCount) threads")
        let corpus = DemoCorpus(vocab: vocab, clusters: clusters, length: quick ? 200_000 : 2_000_000, seed: seed)
        print("corpus: \(corpus.tokens.count) tokens, Zipf frequencies (most frequent token \(corpus.counts.max()!) times, \(corpus.counts.filter { $0 == 0 }.count) unseen)")

        let input = try Embedding(EmbeddingConfig(numEmbeddings: vocab, embeddingDim: dim), stable: true, seed: seed)
        let output = try Embedding(EmbeddingConfig(numEmbeddings: vocab, embeddingDim: dim, sparse: true), seed: seed &+ 1)
        // The output table gets 8-bit state (the layer registered 32); the StableEmbedding keeps its 32-bit state.
        try output.weight.setOverride(.optimBits, 8)
        var config = OptimizerConfig.defaults(.adam, optimBits: 8)
        config.lr = 3e-3
        let opt = try Optimizer(config, params: input.parameters + [output.weight])

        var rng = DemoCorpus.Rng(s: seed &* 31)
        var sg = SkipGramBatch(batch: batch, dim: dim, window: window, negatives: negatives)
        var progress = Progress("training", total: steps)
        var firstLoss = 0.0, lastLoss = 0.0, avg = 0.0
        let tTrain = now()
        for step in 1...steps {
            sg.draw(corpus, &rng)
            try sg.centers.withUnsafeBytes { try input.forward(Indices($0.baseAddress!, dtype: .i64, count: batch), out: &sg.u, outDtype: .f32) }
            try sg.targets.withUnsafeBytes { try output.forward(Indices($0.baseAddress!, dtype: .i64, count: sg.targets.count), out: &sg.v, outDtype: .f32) }
            let loss = sg.lossAndGradients()
            avg = step == 1 ? loss : 0.98 * avg + 0.02 * loss
            if step == 1 { firstLoss = loss }
            lastLoss = avg
            try sg.centers.withUnsafeBytes { try input.backward(Indices($0.baseAddress!, dtype: .i64, count: batch), gradOutput: sg.gu, gradDtype: .f32) }
            try sg.targets.withUnsafeBytes { try output.backward(Indices($0.baseAddress!, dtype: .i64, count: sg.targets.count), gradOutput: sg.gv, gradDtype: .f32) }
            try opt.step()
            opt.zeroGrad()
            if step % 10 == 0 || step == steps { progress.update(step, "loss \(fmt(avg, 4))") }
        }
        let trainTime = now() - tTrain
        print("training: \(steps) steps of \(batch) pairs (+\(negatives) negatives each) in \(fmt(trainTime, 3)) s; loss \(fmt(firstLoss, 4)) -> \(fmt(lastLoss, 4))")
        print("optimizer state (Adam, optim_bits=8 with per-parameter overrides):")
        for (i, p) in opt.params.enumerated() {
            let s = opt.states[i]
            print("  \(p === output.weight ? "output." : "input.")\(p.name): \(s?.bits ?? 0)-bit state, \(humanBytes(s?.bytes ?? 0)) for \(p.numel) params (\(fmt(Double(s?.bytes ?? 0) / Double(p.numel), 3)) B/param)\(s?.rowAligned == true ? ", row-aligned blocks for sparse rows" : "")")
        }

        // Neighbour accuracy of the learned (LayerNorm-ed) input vectors.
        let eval = Array(0..<vocab).filter { corpus.counts[$0] >= 5 }.prefix(quick ? 500 : 2000).map { $0 }
        let weight = (0..<(vocab * dim)).map { input.weight.value($0) }
        let normW = (0..<dim).map { input.norm!.weight.value($0) }, normB = (0..<dim).map { input.norm!.bias.value($0) }
        let acc = neighbourAccuracy(weight, dim: dim, clusters: clusters, queries: eval, candidates: corpus.counts.indices.filter { corpus.counts[$0] >= 5 }, normW: normW, normB: normB)
        print("nearest-neighbour cluster accuracy (cosine, \(eval.count) tokens): \(fmt(acc * 100, 3))% (chance \(fmt(100 / Double(clusters), 3))%)")

        // Quantize the trained table, save, reload, compare.
        print("\nquantized copies of the trained \(vocab) x \(dim) table:")
        print("  kind      file bytes   table B/param  max abs err   RMSE        NN accuracy  lookup rows/s")
        let fileF32 = outDir + "/qembed-demo-f32.safetensors"
        try input.save(fileF32)
        let allIds = (0..<vocab).map(Int64.init)
        let tf = try lookupRate(vocab: vocab) { idx, out in try input.forward(idx, out: out, outDtype: .f32) }
        print("  " + pad("f32", 10) + pad(humanBytes(fileSize(fileF32)), 13) + pad("4", 15) + pad("0", 14) + pad("0", 12) + pad(fmt(acc * 100, 3) + "%", 13) + fmt(tf, 3) + "  (StableEmbedding: gather + LayerNorm)")
        for (kind, nested) in [(QuantizedEmbedding.Kind.nf4, false), (.nf4, true), (.int8, false)] {
            let q = try QuantizedEmbedding.from(input, kind: kind, compressStatistics: nested)
            let path = outDir + "/qembed-demo-\(kind.name)\(nested ? "-nested" : "").safetensors"
            try q.save(path)
            let r = try QuantizedEmbedding.load(path)
            var deq = [Float](repeating: 0, count: vocab * dim)
            try allIds.withUnsafeBytes { try r.forward(Indices($0.baseAddress!, dtype: .i64, count: vocab), out: &deq, outDtype: .f32) }
            var maxErr: Float = 0, sq = 0.0
            for i in 0..<(vocab * dim) { let d = abs(deq[i] - weight[i]); maxErr = max(maxErr, d); sq += Double(d * d) }
            let qacc = neighbourAccuracy(deq, dim: dim, clusters: clusters, queries: eval, candidates: corpus.counts.indices.filter { corpus.counts[$0] >= 5 }, normW: normW, normB: normB)
            let rate = try lookupRate(vocab: vocab) { idx, out in try r.forward(idx, out: out, outDtype: .f32) }
            print("  " + pad(kind.name + (nested ? "+nest" : ""), 10) + pad(humanBytes(fileSize(path)), 13) + pad(fmt(Double(r.tableBytes) / Double(vocab * dim), 3), 15)
                  + pad(fmt(Double(maxErr), 3), 14) + pad(fmt((sq / Double(vocab * dim)).squareRoot(), 3), 12) + pad(fmt(qacc * 100, 3) + "%", 13) + fmt(rate, 3))
        }
        try loraStage(nf4Path: outDir + "/qembed-demo-nf4.safetensors", output: output, corpusSize: corpus.tokens.count,
                      vocab: vocab, clusters: clusters, dim: dim, normW: normW, normB: normB)
        print("files in \(outDir) (qembed-demo-*.safetensors); total \(fmt(now() - t0, 3)) s")
    }

    func now() -> Double { monotonicNow() }

    func pad(_ s: String, _ w: Int) -> String { s.count >= w ? s + " " : s + String(repeating: " ", count: w - s.count) }

    /// Rows per second of 65536 random lookups.
    func lookupRate(vocab: Int, _ f: (Indices, UnsafeMutableRawPointer) throws -> Void) throws -> Double {
        var rng = DemoCorpus.Rng(s: 99)
        let n = 65536
        let idx = (0..<n).map { _ in Int64(rng.below(vocab)) }
        let out = UnsafeMutableRawPointer.allocate(byteCount: n * 1024 * 4, alignment: 64)
        defer { out.deallocate() }
        var best = Double.infinity
        try idx.withUnsafeBytes { ib in
            let ind = try Indices(ib.baseAddress!, dtype: .i64, count: n)
            for _ in 0..<4 { let t = now(); try f(ind, out); best = min(best, now() - t) }
        }
        return Double(n) / best
    }

    /// Fraction of queries whose nearest other candidate (cosine of the
    /// LayerNorm-ed rows) is in the same hidden cluster.
    func neighbourAccuracy(_ w: [Float], dim: Int, clusters: Int, queries: [Int], candidates: [Int], normW: [Float], normB: [Float],
                           clusterOf: [Int]? = nil) -> Double {
        let cluster = { (t: Int) -> Int in clusterOf?[t] ?? t % clusters }
        func normed(_ r: Int) -> [Float] {
            let x = Array(w[(r * dim)..<((r + 1) * dim)])
            let mean = x.reduce(0, +) / Float(dim)
            let v = x.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Float(dim)
            let y = (0..<dim).map { (x[$0] - mean) / (v + 1e-5).squareRoot() * normW[$0] + normB[$0] }
            let n = max(y.map { $0 * $0 }.reduce(0, +).squareRoot(), 1e-12)
            return y.map { $0 / n }
        }
        let cand = candidates.map { normed($0) }
        var hits = 0
        for q in queries {
            let a = normed(q)
            var best = -Float.infinity, bestId = -1
            for (ci, c) in candidates.enumerated() where c != q {
                var s: Float = 0
                for k in 0..<dim { s += a[k] * cand[ci][k] }
                if s > best { best = s; bestId = c }
            }
            if bestId >= 0 && cluster(bestId) == cluster(q) { hits += 1 }
        }
        return Double(hits) / Double(max(queries.count, 1))
    }
}
