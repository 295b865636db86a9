import CQembed
import QembedCore

// MARK: - Scoring (qembed_*_score, qembed_*_topk)

private func scoreMetric(_ raw: CInt) throws(QembedError) -> ScoreMetric {
    guard let m = ScoreMetric(rawValue: raw) else {
        throw .unsupported("metric: unknown metric value \(raw) (use QEMBED_SCORE_DOT or QEMBED_SCORE_COSINE)")
    }
    return m
}

/// The checked arguments of a score or top-k call.
private struct ScoreArgs {
    let queries: UnsafeRawPointer
    let dtype: DType
    let num: Int
    let metric: ScoreMetric

    init(_ queries: UnsafeRawPointer?, _ dtype: CInt, _ n: Int64, _ m: CInt, dim: Int) throws(QembedError) {
        let num = try count(n, "num_queries", minimum: 0)
        self.dtype = try DType.float(dtype, argument: "query_dtype")
        self.metric = try scoreMetric(m)
        _ = try checkedMul(try checkedMul(num, dim, "num_queries x embedding_dim"), 4, "queries bytes")
        self.queries = num == 0 ? (queries ?? UnsafeRawPointer(bitPattern: 8)!) : try need(queries, "queries")
        self.num = num
    }
}

private func scoreOut(_ scores: UnsafeMutablePointer<Float>?, _ len: Int64, _ nq: Int, _ rows: Int) throws(QembedError) -> UnsafeMutablePointer<Float> {
    let needed = try checkedMul(nq, rows, "num_queries x num_embeddings")
    _ = try bytes(needed, 4, "scores")
    try capacity(len, needed, "scores")
    if needed == 0, scores == nil { return UnsafeMutablePointer(bitPattern: 8)! }
    return try need(scores, "scores")
}

private func topkOut(_ k: Int64, _ len: Int64, _ nq: Int, rows: Int) throws(QembedError) -> Int {
    guard k >= 1 && k <= Int64(rows) else {
        throw QembedError(.outOfRange, "k = \(k) must be within [1, \(rows)] (the number of rows)")
    }
    let needed = try checkedMul(nq, Int(k), "num_queries x k")
    _ = try bytes(needed, 8, "indices")
    try capacity(len, needed, "indices and scores")
    return Int(k)
}

@c @implementation
public func qembed_embedding_score(_ e: OpaquePointer!, _ queries: UnsafeRawPointer!, _ query_dtype: CInt, _ num_queries: Int64,
                                   _ metric: CInt, _ scores: UnsafeMutablePointer<Float>!, _ scores_len: Int64) -> qembed_status {
    capi { () throws(QembedError) in
        let l = try embedding(e)
        let a = try ScoreArgs(queries, query_dtype, num_queries, metric, dim: l.config.embeddingDim)
        let out = try scoreOut(scores, scores_len, a.num, l.config.numEmbeddings)
        if a.num == 0 { return }
        try l.score(a.queries, dtype: a.dtype, count: a.num, metric: a.metric, out: out)
    }
}

@c @implementation
public func qembed_qembedding_score(_ q: OpaquePointer!, _ queries: UnsafeRawPointer!, _ query_dtype: CInt, _ num_queries: Int64,
                                    _ metric: CInt, _ scores: UnsafeMutablePointer<Float>!, _ scores_len: Int64) -> qembed_status {
    capi { () throws(QembedError) in
        let l = try qembedding(q)
        let a = try ScoreArgs(queries, query_dtype, num_queries, metric, dim: l.embeddingDim)
        let out = try scoreOut(scores, scores_len, a.num, l.numEmbeddings)
        if a.num == 0 { return }
        try l.score(a.queries, dtype: a.dtype, count: a.num, metric: a.metric, out: out)
    }
}

@c @implementation
public func qembed_embedding_topk(_ e: OpaquePointer!, _ queries: UnsafeRawPointer!, _ query_dtype: CInt, _ num_queries: Int64,
                                  _ metric: CInt, _ k: Int64, _ indices: UnsafeMutablePointer<Int64>!,
                                  _ scores: UnsafeMutablePointer<Float>!, _ out_len: Int64) -> qembed_status {
    capi { () throws(QembedError) in
        let l = try embedding(e)
        let a = try ScoreArgs(queries, query_dtype, num_queries, metric, dim: l.config.embeddingDim)
        let kk = try topkOut(k, out_len, a.num, rows: l.config.numEmbeddings)
        if a.num == 0 { return }
        try l.topk(a.queries, dtype: a.dtype, count: a.num, metric: a.metric, k: kk,
                   indices: try need(indices, "indices"), scores: try need(scores, "scores"))
    }
}

@c @implementation
public func qembed_qembedding_topk(_ q: OpaquePointer!, _ queries: UnsafeRawPointer!, _ query_dtype: CInt, _ num_queries: Int64,
                                   _ metric: CInt, _ k: Int64, _ indices: UnsafeMutablePointer<Int64>!,
                                   _ scores: UnsafeMutablePointer<Float>!, _ out_len: Int64) -> qembed_status {
    capi { () throws(QembedError) in
        let l = try qembedding(q)
        let a = try ScoreArgs(queries, query_dtype, num_queries, metric, dim: l.embeddingDim)
        let kk = try topkOut(k, out_len, a.num, rows: l.numEmbeddings)
        if a.num == 0 { return }
        try l.topk(a.queries, dtype: a.dtype, count: a.num, metric: a.metric, k: kk,
                   indices: try need(indices, "indices"), scores: try need(scores, "scores"))
    }
}
