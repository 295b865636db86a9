import QembedCore
import QembedIO
#if canImport(Glibc)
import Glibc
#endif

/// The demo's LoRA stage: the saved NF4 table, frozen, adapted with LoRA
/// (r = 8) + AdamW8bit to a relabelled corpus in which one token in eight
/// has moved to the next cluster; neighbour accuracy before and after,
/// under the new labels, and the adapter's size.
extension Demo {
    func loraStage(nf4Path: String, output: Embedding, corpusSize: Int, vocab: Int, clusters: Int, dim: Int,
                   normW: [Float], normB: [Float]) throws {
        let steps = quick ? 300 : 1500, batch = 1024, r = 8
        let shifted = DemoCorpus(vocab: vocab, clusters: clusters, length: corpusSize, seed: seed &+ 101, relabelled: true)
        let moved = (0..<vocab).filter { DemoCorpus.moves($0, clusters: clusters) && shifted.counts[$0] >= 5 }
        let kept = (0..<vocab).filter { !DemoCorpus.moves($0, clusters: clusters) && shifted.counts[$0] >= 5 }
        let candidates = kept + moved
        let evalKept = Array(kept.prefix(quick ? 300 : 1000))
        print("\nLoRA over the saved NF4 table (frozen), fine-tuned on a relabelled corpus (\(moved.count) frequent tokens moved to another cluster):")
        let base = try QuantizedEmbedding.load(nf4Path)
        let lora = try LoraEmbedding(base: .quantized(base), r: r, alpha: 16, useRslora: false, seed: seed)
        func accuracy() throws -> (Double, Double) {
            var table = [Float](repeating: 0, count: vocab * dim)
            try lora.merged(out: &table, outDtype: .f32)
            let f = { (q: [Int]) in neighbourAccuracy(table, dim: dim, clusters: clusters, queries: q, candidates: candidates,
                                                      normW: normW, normB: normB, clusterOf: shifted.clusterOf) }
            return (f(moved), f(evalKept))
        }
        let (movedBefore, keptBefore) = try accuracy()

        // The model of the first stage, the input table now NF4 + LoRA: u =
        // LayerNorm(lora(center)) with the trained LayerNorm frozen, v from the
        // output table, which trains on.
        var config = OptimizerConfig.defaults(.adamw, optimBits: 8)
        config.lr = 3e-3
        config.min8bitSize = 4096
        let opt = try Optimizer(config, params: lora.parameters + [output.weight])
        var rng = DemoCorpus.Rng(s: seed &* 77)
        var sg = SkipGramBatch(batch: batch, dim: dim)
        var raw = [Float](repeating: 0, count: batch * dim), graw = raw
        var progress = Progress("LoRA", total: steps)
        var avg = 0.0, first = 0.0
        let t0 = now()
        for step in 1...steps {
            sg.draw(shifted, &rng)
            try sg.centers.withUnsafeBytes { try lora.forward(Indices($0.baseAddress!, dtype: .i64, count: batch), out: &raw, outDtype: .f32) }
            FrozenLayerNorm.forward(raw, &sg.u, rows: batch, dim: dim, w: normW, b: normB)
            try sg.targets.withUnsafeBytes { try output.forward(Indices($0.baseAddress!, dtype: .i64, count: sg.targets.count), out: &sg.v, outDtype: .f32) }
            let loss = sg.lossAndGradients()
            avg = step == 1 ? loss : 0.98 * avg + 0.02 * loss
            if step == 1 { first = loss }
            FrozenLayerNorm.backward(raw, sg.gu, &graw, rows: batch, dim: dim, w: normW)
            try sg.centers.withUnsafeBytes { try lora.backward(Indices($0.baseAddress!, dtype: .i64, count: batch), gradOutput: graw, gradDtype: .f32) }
            try sg.targets.withUnsafeBytes { try output.backward(Indices($0.baseAddress!, dtype: .i64, count: sg.targets.count), gradOutput: sg.gv, gradDtype: .f32) }
            try opt.step()
            opt.zeroGrad()
            lora.zeroGrad()
            if step % 10 == 0 || step == steps { progress.update(step, "loss \(fmt(avg, 4))") }
        }
        let (movedAfter, keptAfter) = try accuracy()
        print("  \(steps) steps in \(fmt(now() - t0, 3)) s; loss \(fmt(first, 4)) -> \(fmt(avg, 4))")
        print("  neighbour accuracy under the new labels: moved tokens \(fmt(movedBefore * 100, 3))% -> \(fmt(movedAfter * 100, 3))%, "
              + "other tokens \(fmt(keptBefore * 100, 3))% -> \(fmt(keptAfter * 100, 3))%")
        let path = outDir + "/qembed-demo-lora.safetensors"
        try saveAdapter(lora, path)
        let aBits = opt.states[0]?.bits ?? 0
        print("  adapter: r = \(r), \(lora.aT.numel + lora.bT.numel) params (A \(vocab) x \(r), B \(dim) x \(r)), "
              + "\(humanBytes(fileSize(path))) on disk (peft's keys) beside the \(humanBytes(fileSize(nf4Path))) NF4 table; "
              + "A's AdamW state \(aBits)-bit")
    }

    /// peft's adapter tensors (lora_embedding_A: r x V, lora_embedding_B: D x r), transposed from the held A^T and B^T.
    func saveAdapter(_ lora: LoraEmbedding, _ path: String) throws {
        let v = lora.numEmbeddings, d = lora.embeddingDim, r = lora.r
        let at = lora.aT.data.floats(), bt = lora.bT.data.floats()
        var a = [Float](repeating: 0, count: r * v), b = [Float](repeating: 0, count: d * r)
        for i in 0..<v { for j in 0..<r { a[j * v + i] = at[i * r + j] } }
        for j in 0..<r { for k in 0..<d { b[k * r + j] = bt[j * d + k] } }
        try a.withUnsafeBytes { ab in
            try b.withUnsafeBytes { bb in
                try SafeTensors.write(path, [
                    TensorSource(name: "base_model.model.embed_tokens.lora_embedding_A", dtypeName: "F32", shape: [r, v],
                                 data: ab.baseAddress!, nbytes: ab.count),
                    TensorSource(name: "base_model.model.embed_tokens.lora_embedding_B", dtypeName: "F32", shape: [d, r],
                                 data: bb.baseAddress!, nbytes: bb.count),
                ], metadata: [("r", "\(r)"), ("lora_alpha", "\(lora.alpha)"), ("use_rslora", "\(lora.useRslora)"), ("format", "pt")])
            }
        }
    }
}

/// LayerNorm over rows with fixed weight and bias (eps 1e-5), and its
/// backward into the input, for the LoRA stage's frozen StableEmbedding norm.
enum FrozenLayerNorm {
    /// Mean and 1 / sqrt(variance + 1e-5) of row `o ..< o + dim`.
    static func stats(_ x: [Float], _ o: Int, _ dim: Int) -> (mean: Float, inv: Float) {
        var mean: Float = 0, v: Float = 0
        for k in 0..<dim { mean += x[o + k] }
        mean /= Float(dim)
        for k in 0..<dim { v += (x[o + k] - mean) * (x[o + k] - mean) }
        return (mean, 1 / (v / Float(dim) + 1e-5).squareRoot())
    }

    static func forward(_ x: [Float], _ y: inout [Float], rows: Int, dim: Int, w: [Float], b: [Float]) {
        for r in 0..<rows {
            let o = r * dim, (mean, inv) = stats(x, o, dim)
            for k in 0..<dim { y[o + k] = (x[o + k] - mean) * inv * w[k] + b[k] }
        }
    }

    /// dx = inv * (wg - mean(wg) - xhat * mean(wg * xhat)), wg = w * dy.
    static func backward(_ x: [Float], _ dy: [Float], _ dx: inout [Float], rows: Int, dim: Int, w: [Float]) {
        for r in 0..<rows {
            let o = r * dim, (mean, inv) = stats(x, o, dim)
            var m1: Float = 0, m2: Float = 0
            for k in 0..<dim {
                let wg = w[k] * dy[o + k], xh = (x[o + k] - mean) * inv
                m1 += wg; m2 += wg * xh
            }
            m1 /= Float(dim); m2 /= Float(dim)
            for k in 0..<dim {
                let xh = (x[o + k] - mean) * inv
                dx[o + k] = inv * (w[k] * dy[o + k] - m1 - xh * m2)
            }
        }
    }
}
