/// torch.nn.EmbeddingBag over an Embedding's weight (raw rows: a
/// StableEmbedding's LayerNorm does not apply to bags).
extension Embedding {
    /// out (numBags x dim of outDtype) = the bags' reductions. With max_norm
    /// every referenced row (all of bags.indices) is renormalized first.
    public func bagForward(_ bags: Bags, out: UnsafeMutableRawPointer, outDtype: DType) throws(QembedError) {
        guard outDtype.isFloat else { throw .unsupported("out_dtype: \(outDtype.name) is not a float type (use f32, f16 or bf16)") }
        if config.maxNorm != nil {
            lock.withExclusive {
                renorm(bags.indices)
                reduce(bags, out: out, outDtype: outDtype)
            }
        } else {
            lock.withShared { reduce(bags, out: out, outDtype: outDtype) }
        }
    }

    private func reduce(_ bags: Bags, out: UnsafeMutableRawPointer, outDtype: DType) {
        let w = weight, dim = config.embeddingDim
        switch w.dtype {
        case .f16: reduceBags(FloatRows<F16>(base: UnsafePointer(w.data.raw.assumingMemoryBound(to: UInt16.self)), dim: dim), bags, out: out, outDtype: outDtype)
        case .bf16: reduceBags(FloatRows<BF16>(base: UnsafePointer(w.data.raw.assumingMemoryBound(to: UInt16.self)), dim: dim), bags, out: out, outDtype: outDtype)
        default: reduceBags(FloatRows<F32>(base: UnsafePointer(w.data.floats()), dim: dim), bags, out: out, outDtype: outDtype)
        }
    }

    /// Accumulates the weight gradient of bagForward given gradOutput
    /// (numBags x dim of gradDtype); optionally the gradient of the
    /// per-sample weights (count floats) into gradWeights.
    public func bagBackward(_ bags: Bags, gradOutput: UnsafeRawPointer, gradDtype: DType,
                            gradWeights: UnsafeMutablePointer<Float>?) throws(QembedError) {
        guard gradDtype.isFloat else { throw .unsupported("grad_dtype: \(gradDtype.name) is not a float type (use f32, f16 or bf16)") }
        if bags.mode == .max {
            guard !config.scaleGradByFreq else { throw .invalid("max mode does not support scaling the gradient by the frequency") }
            guard !config.sparse else { throw .invalid("max mode does not support sparse weights") }
        }
        let dim = config.embeddingDim
        let total = try checkedMul(bags.numBags, dim, "num_bags x embedding_dim")
        _ = try withFloatElement(gradDtype) { (e) throws(QembedError) in try checkFinite(e, gradOutput, total, argument: "grad_output") }
        let bagged = bags.bagged
        let perIndex = try checkedMul(bagged, dim, "bagged indices x embedding_dim")
        _ = try checkedMul(perIndex, 4, "bagged indices x embedding_dim x 4 bytes")
        let gBuf = try AlignedBuffer(byteCount: max(total, 1) * 4, zeroed: false)
        let g = gBuf.floats()
        loadFloats(gradOutput, gradDtype, total, g)
        try lock.withExclusive { () throws(QembedError) in
            if let gradWeights { perSampleWeightGrad(bags, g, into: gradWeights) }
            guard weight.requiresGrad, bagged > 0 else { return }
            if bags.mode == .max {
                maxBackward(bags, g, into: try weight.denseGrad())
                return
            }
            // Each bagged index's gradient row: the bag's row times its
            // per-sample weight, or divided by the bag's non-padding count.
            let rowsBuf = try AlignedBuffer(byteCount: perIndex * 4, zeroed: false)
            let rg = rowsBuf.floats()
            Parallel.forEachChunk(bags.numBags, grain: max(1, bags.numBags * 16384 / max(1, perIndex))) { range in
                for b in range {
                    let lo = bags.start(b), hi = bags.end(b)
                    let src = g + b * dim
                    let n = bags.mode == .mean ? bags.nonPadding(b) : 1
                    for k in lo..<hi {
                        let dst = rg + k * dim
                        if bags.weights != nil {
                            let w = bags.weight(k)
                            for j in 0..<dim { dst[j] = src[j] * w }
                        } else if n > 1 {
                            let c = Float(n)
                            for j in 0..<dim { dst[j] = src[j] / c }
                        } else {
                            dst.update(from: src, count: dim)
                        }
                    }
                }
            }
            let idx = bags.indices.prefix(bagged)
            if config.sparse {
                accumulateSparse(idx, rg, pad: bags.paddingIdx, countIn: bags.indices)
            } else {
                accumulateDense(idx, rg, into: try weight.denseGrad(), pad: bags.paddingIdx, countIn: bags.indices)
            }
        }
    }

    /// gradWeights[k] = <g[bag(k)], row(indices[k])> (0 for padding and for
    /// indices in no bag), summed in j order in float32.
    private func perSampleWeightGrad(_ bags: Bags, _ g: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>) {
        let dim = config.embeddingDim, w = weight, pad = bags.paddingIdx ?? -1
        out.update(repeating: 0, count: bags.indices.count)
        Parallel.forEachChunk(bags.numBags, grain: max(1, bags.numBags * 16384 / max(1, bags.bagged * dim))) { range in
            for b in range {
                let src = g + b * dim
                for k in bags.start(b)..<bags.end(b) {
                    let i = bags.indices[k]
                    if i == pad { continue }
                    var s: Float = 0
                    for j in 0..<dim { s += src[j] * w.value(i * dim + j) }
                    out[k] = s
                }
            }
        }
    }

    /// grad[argmax row of (b, j)][j] += g[b][j]; the argmax is recomputed
    /// from the current weight (the first maximal non-padding index).
    private func maxBackward(_ bags: Bags, _ g: UnsafePointer<Float>, into grad: UnsafeMutablePointer<Float>) {
        let dim = config.embeddingDim, w = weight, pad = bags.paddingIdx ?? -1
        let nb = bags.numBags
        var arg = [Int](repeating: -1, count: nb * dim)
        arg.withUnsafeMutableBufferPointer { ab in
            let a = ab.baseAddress!
            Parallel.forEachChunk(nb, grain: max(1, nb * 16384 / max(1, bags.bagged * dim))) { range in
                let best = UnsafeMutablePointer<Float>.allocate(capacity: dim)
                defer { best.deallocate() }
                for b in range {
                    var first = true
                    for k in bags.start(b)..<bags.end(b) {
                        let i = bags.indices[k]
                        if i == pad { continue }
                        for j in 0..<dim {
                            let v = w.value(i * dim + j)
                            if first || v > best[j] { best[j] = v; a[b * dim + j] = i }
                        }
                        first = false
                    }
                }
            }
        }
        // Rows are split among threads, so no two write the same row.
        let rows = config.numEmbeddings
        let parts = min(Parallel.threadCount, max(1, nb * dim / 32768))
        arg.withUnsafeBufferPointer { ab in
            Parallel.forEachChunk(parts, grain: 1) { pr in
                for part in pr {
                    let lo = rows * part / parts, hi = rows * (part + 1) / parts
                    for t in 0..<(nb * dim) {
                        let i = ab[t]
                        if i >= lo && i < hi { grad[i * dim + t % dim] += g[t] }
                    }
                }
            }
        }
    }
}
