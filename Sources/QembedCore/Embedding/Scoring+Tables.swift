/// score / topk over the two table kinds: a float layer's weight (shared
/// lock: concurrent with lookups) and a quantized table (immutable).
extension Embedding {
    /// Calls body with the weight as a row source, under the shared lock.
    func withRows<T>(_ body: (any BagRowSource) -> T) -> T {
        lock.withShared {
            let w = weight, dim = config.embeddingDim
            switch w.dtype {
            case .f16: return body(FloatRows<F16>(base: UnsafePointer(w.data.raw.assumingMemoryBound(to: UInt16.self)), dim: dim))
            case .bf16: return body(FloatRows<BF16>(base: UnsafePointer(w.data.raw.assumingMemoryBound(to: UInt16.self)), dim: dim))
            default: return body(FloatRows<F32>(base: UnsafePointer(w.data.floats()), dim: dim))
            }
        }
    }

    /// out (numQueries x numEmbeddings) = every query scored against every row.
    public func score(_ queries: UnsafeRawPointer, dtype: DType, count: Int, metric: ScoreMetric,
                      out: UnsafeMutablePointer<Float>) throws(QembedError) {
        let q = try ScoreQueries(queries, dtype: dtype, count: count, dim: config.embeddingDim, metric: metric)
        withRows { rows in Scoring.scores(rows, count: config.numEmbeddings, q, metric: metric, out: out) }
    }

    /// The k best rows of each query (numQueries x k indices and scores).
    public func topk(_ queries: UnsafeRawPointer, dtype: DType, count: Int, metric: ScoreMetric, k: Int,
                     indices: UnsafeMutablePointer<Int64>, scores: UnsafeMutablePointer<Float>) throws(QembedError) {
        try Scoring.checkK(k, rows: config.numEmbeddings)
        let q = try ScoreQueries(queries, dtype: dtype, count: count, dim: config.embeddingDim, metric: metric)
        withRows { rows in Scoring.topk(rows, count: config.numEmbeddings, q, metric: metric, k: k, indices: indices, scores: scores) }
    }
}

extension QuantizedEmbedding {
    public func score(_ queries: UnsafeRawPointer, dtype: DType, count: Int, metric: ScoreMetric,
                      out: UnsafeMutablePointer<Float>) throws(QembedError) {
        let q = try ScoreQueries(queries, dtype: dtype, count: count, dim: embeddingDim, metric: metric)
        withRows { rows in Scoring.scores(rows, count: numEmbeddings, q, metric: metric, out: out) }
    }

    public func topk(_ queries: UnsafeRawPointer, dtype: DType, count: Int, metric: ScoreMetric, k: Int,
                     indices: UnsafeMutablePointer<Int64>, scores: UnsafeMutablePointer<Float>) throws(QembedError) {
        try Scoring.checkK(k, rows: numEmbeddings)
        let q = try ScoreQueries(queries, dtype: dtype, count: count, dim: embeddingDim, metric: metric)
        withRows { rows in Scoring.topk(rows, count: numEmbeddings, q, metric: metric, k: k, indices: indices, scores: scores) }
    }
}

extension Scoring {
    static func checkK(_ k: Int, rows: Int) throws(QembedError) {
        guard k >= 1 && k <= rows else {
            throw QembedError(.outOfRange, "k = \(k) must be within [1, \(rows)] (the number of rows)")
        }
    }
}
