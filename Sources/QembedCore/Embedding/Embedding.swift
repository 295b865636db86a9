import CQembedSIMD
#if canImport(Glibc)
import Glibc
#endif

/// Rows fetched ahead in gathers (random rows are latency-bound otherwise);
/// wide rows are left to the hardware prefetcher (measured: it helps rows of
/// 512 B, hurts rows of 4 KiB).
let prefetchDistance = 4
let prefetchMaxRowBytes = 2048

/// Configuration of an Embedding / StableEmbedding (bitsandbytes' constructor).
public struct EmbeddingConfig: Sendable {
    public var numEmbeddings: Int
    public var embeddingDim: Int
    /// Normalized to [0, numEmbeddings), or nil.
    public var paddingIdx: Int?
    public var maxNorm: Double?
    public var normType: Double = 2
    public var scaleGradByFreq = false
    public var sparse = false
    public var dtype: DType = .f32

    public init(numEmbeddings: Int, embeddingDim: Int, paddingIdx: Int? = nil, maxNorm: Double? = nil,
                normType: Double = 2, scaleGradByFreq: Bool = false, sparse: Bool = false, dtype: DType = .f32) throws(QembedError) {
        guard numEmbeddings >= 1 else { throw .invalid("num_embeddings must be >= 1, got \(numEmbeddings)") }
        guard embeddingDim >= 1 else { throw .invalid("embedding_dim must be >= 1, got \(embeddingDim)") }
        _ = try checkedMul(try checkedMul(numEmbeddings, embeddingDim, "num_embeddings x embedding_dim"), 4,
                           "num_embeddings x embedding_dim x 4 bytes")
        guard dtype.isFloat else { throw .unsupported("dtype: \(dtype.name) is not a float type (use f32, f16 or bf16)") }
        if var p = paddingIdx {
            guard p >= -numEmbeddings && p < numEmbeddings else {
                throw QembedError(.outOfRange, "padding_idx \(p) must be within [-\(numEmbeddings), \(numEmbeddings))")
            }
            if p < 0 { p += numEmbeddings }
            self.paddingIdx = p
        }
        if let m = maxNorm {
            guard m > 0 && m.isFinite else { throw .invalid("max_norm must be finite and > 0, got \(m)") }
            guard normType > 0 && !normType.isNaN else { throw .invalid("norm_type must be > 0, got \(normType)") }
        }
        self.numEmbeddings = numEmbeddings
        self.embeddingDim = embeddingDim
        self.maxNorm = maxNorm
        self.normType = normType
        self.scaleGradByFreq = scaleGradByFreq
        self.sparse = sparse
        self.dtype = dtype
    }
}

/// Rows [rowOffset, rowOffset + rows) of a table of totalRows rows: a layer
/// that holds one row shard of a larger table.
public struct RowShard: Sendable, Equatable {
    public let rowOffset: Int
    public let totalRows: Int
    public init(rowOffset: Int, totalRows: Int, rows: Int) throws(QembedError) {
        guard rowOffset >= 0 else { throw QembedError(.outOfRange, "row_offset must be >= 0, got \(rowOffset)") }
        guard totalRows >= rows && rowOffset <= totalRows - rows else {
            throw QembedError(.outOfRange, "rows [\(rowOffset), \(rowOffset) + \(rows)) do not fit a table of total_rows = \(totalRows)")
        }
        self.rowOffset = rowOffset
        self.totalRows = totalRows
    }
}

/// bitsandbytes.nn.Embedding (torch.nn.Embedding with Xavier-uniform init)
/// and, with `stable`, StableEmbedding (+ LayerNorm in float32).
///
/// Thread safety: forward without max_norm takes the shared lock; every
/// mutating call (forward with max_norm, backward, zero_grad, reset, loads)
/// takes the exclusive lock.
public final class Embedding: @unchecked Sendable {
    public let config: EmbeddingConfig
    public let weight: Parameter
    public let norm: LayerNorm?
    /// The rows of a larger table this layer holds (nil: the whole table).
    /// Its Xavier draw is those rows of the larger table's (fan_in =
    /// totalRows), so the shards of one seed tile the unsharded table.
    public let shard: RowShard?
    public let lock = RWLock()
    /// Gradient scratch kept between backward calls (guarded by the exclusive
    /// lock): a fresh 100 MB buffer per call costs more in page faults than the
    /// LayerNorm backward itself.
    private var scratch: AlignedBuffer?

    public var isStable: Bool { norm != nil }
    public var parameters: [Parameter] { norm.map { [weight, $0.weight, $0.bias] } ?? [weight] }

    /// A new layer; `pretrained` (rows x dim of `pretrainedDtype`) is copied,
    /// otherwise the table is Xavier-uniform from `seed`.
    public init(_ config: EmbeddingConfig, stable: Bool = false, seed: UInt64 = 0,
                pretrained: UnsafeRawPointer? = nil, pretrainedDtype: DType = .f32, freeze: Bool = false,
                weightName: String = "weight", shard: RowShard? = nil) throws(QembedError) {
        self.config = config
        self.shard = shard
        weight = try Parameter(name: weightName, dtype: config.dtype, shape: [config.numEmbeddings, config.embeddingDim],
                               requiresGrad: !(pretrained != nil && freeze), sparse: config.sparse, lock: lock)
        norm = stable ? try LayerNorm(dim: config.embeddingDim, lock: lock) : nil
        if let shard {
            let (whole, overflow) = shard.totalRows.multipliedReportingOverflow(by: config.embeddingDim)
            weight.stateSelectionNumel = overflow ? Int.max : whole
        }
        // Both upstream layers register their weight for 32-bit optimizer state.
        try weight.setOverride(.optimBits, 32)
        if let pretrained {
            try weight.load(pretrained, dtype: pretrainedDtype, count: weight.numel, argument: "weight")
        } else {
            resetTable(seed: seed)
        }
    }

    private func resetTable(seed: UInt64) {
        Xavier.fill(weight, fanIn: shard?.totalRows ?? config.numEmbeddings, fanOut: config.embeddingDim, seed: seed,
                    offset: (shard?.rowOffset ?? 0) * config.embeddingDim)
        if let p = config.paddingIdx {
            memsetZero(weight.data.raw + p * config.embeddingDim * weight.dtype.size, config.embeddingDim * weight.dtype.size)
        }
    }

    /// reset_parameters(): Xavier table (padding row zero), LayerNorm ones/zeros.
    public func resetParameters(seed: UInt64) {
        lock.withExclusive {
            resetTable(seed: seed)
            norm?.reset()
        }
    }

    // MARK: Forward

    /// out[k] = row indices[k] (StableEmbedding: LayerNorm of it) as `outDtype`.
    public func forward(_ indices: Indices, out: UnsafeMutableRawPointer, outDtype: DType) throws(QembedError) {
        guard outDtype.isFloat else { throw .unsupported("out_dtype: \(outDtype.name) is not a float type (use f32, f16 or bf16)") }
        try indices.validate(rows: config.numEmbeddings)
        if config.maxNorm != nil {
            lock.withExclusive {
                renorm(indices)
                gather(indices, out: out, outDtype: outDtype)
            }
        } else {
            lock.withShared { gather(indices, out: out, outDtype: outDtype) }
        }
    }

    /// torch's embedding_renorm_: each distinct referenced row whose p-norm
    /// exceeds max_norm is scaled by max_norm / (norm + 1e-7).
    func renorm(_ indices: Indices) {
        guard let maxNorm = config.maxNorm else { return }
        let rows = indices.distinct(rows: config.numEmbeddings)
        let dim = config.embeddingDim, p = config.normType
        let w = weight
        rows.withUnsafeBufferPointer { rb in
            Parallel.forEachChunk(rb.count, grain: max(1, 8192 / dim)) { range in
                for r in range {
                    let base = rb[r] * dim
                    var acc = 0.0
                    if p == 2 && w.dtype == .f32 {
                        // Squares summed in double, four lanes at a time.
                        let x = w.data.floats() + base
                        var a = SIMD4<Double>(), j = 0
                        while j + 4 <= dim {
                            let v = SIMD4<Double>(Double(x[j]), Double(x[j + 1]), Double(x[j + 2]), Double(x[j + 3]))
                            a += v * v
                            j += 4
                        }
                        acc = a.sum()
                        while j < dim { acc += Double(x[j]) * Double(x[j]); j += 1 }
                    } else {
                        for j in 0..<dim {
                            let v = Double(abs(w.value(base + j)))
                            if p == 2 { acc += v * v } else if p == 1 { acc += v } else if p.isInfinite { acc = max(acc, v) } else { acc += pow(v, p) }
                        }
                    }
                    let norm = p == 2 ? acc.squareRoot() : (p == 1 || p.isInfinite ? acc : pow(acc, 1 / p))
                    if norm > maxNorm {
                        let scale = Float(maxNorm / (norm + 1e-7))
                        for j in 0..<dim { storeFloat(w.value(base + j) * scale, w.data.raw, w.dtype, base + j) }
                    }
                }
            }
        }
    }

    private func gather(_ indices: Indices, out: UnsafeMutableRawPointer, outDtype: DType) {
        let dim = config.embeddingDim
        let w = weight
        if let norm {
            // float32 rows of whole cache lines into an output larger than the
            // cache are normalized in L1 and streamed (StreamedOutput).
            let streaming = outDtype == .f32 && w.dtype == .f32 && dim * 4 >= 256
                && StreamedOutput.streams(bytes: indices.count * dim * 4)
            Parallel.forEachChunk(indices.count, grain: max(1, 4096 / dim)) { range in
                let x = UnsafeMutablePointer<Float>.allocate(capacity: dim)
                defer { x.deallocate() }
                let rowBytes = dim * w.dtype.size
                for k in range {
                    if k + prefetchDistance < range.upperBound && rowBytes <= prefetchMaxRowBytes { qembed__prefetch(w.data.raw + indices[k + prefetchDistance] * rowBytes, rowBytes) }
                    let src = w.data.raw + indices[k] * dim * w.dtype.size
                    if streaming {
                        norm.forwardRow(src.assumingMemoryBound(to: Float.self), into: x)
                        qembed__stream_store(out + k * rowBytes, x, rowBytes)
                        continue
                    }
                    if outDtype == .f32 && w.dtype == .f32 {
                        norm.forwardRow(src.assumingMemoryBound(to: Float.self), into: out.assumingMemoryBound(to: Float.self) + k * dim)
                        continue
                    }
                    loadFloats(src, w.dtype, dim, x)
                    norm.forwardRow(x, into: x)
                    if w.dtype != .f32 && w.dtype != outDtype {  // upstream casts to the weight dtype first
                        for j in 0..<dim { x[j] = loadRounded(x[j], w.dtype) }
                    }
                    storeFloats(x, dim, out + k * dim * outDtype.size, outDtype)
                }
                if streaming { qembed__stream_fence() }
            }
            return
        }
        let rowBytes = dim * w.dtype.size
        if outDtype == w.dtype {
            // Rows of whole cache lines into an output larger than the cache
            // go around it (StreamedOutput).
            let streaming = rowBytes >= 256 && StreamedOutput.streams(bytes: indices.count * rowBytes)
            Parallel.forEachChunk(indices.count, grain: max(1, 16384 / rowBytes)) { range in
                for k in range {
                    if k + prefetchDistance < range.upperBound && rowBytes <= prefetchMaxRowBytes { qembed__prefetch(w.data.raw + indices[k + prefetchDistance] * rowBytes, rowBytes) }
                    if streaming {
                        qembed__stream_store(out + k * rowBytes, w.data.raw + indices[k] * rowBytes, rowBytes)
                    } else {
                        qembed__copy_row(out + k * rowBytes, w.data.raw + indices[k] * rowBytes, rowBytes)
                    }
                }
                if streaming { qembed__stream_fence() }
            }
        } else {
            Parallel.forEachChunk(indices.count, grain: max(1, 4096 / dim)) { range in
                for k in range {
                    let src = w.data.raw + indices[k] * rowBytes
                    let dst = out + k * dim * outDtype.size
                    for j in 0..<dim { storeFloat(loadFloat(src, w.dtype, j), dst, outDtype, j) }
                }
            }
        }
    }

    // MARK: Backward

    /// Accumulates gradients for `indices` given grad_output (count x dim of gradDtype).
    public func backward(_ indices: Indices, gradOutput: UnsafeRawPointer, gradDtype: DType) throws(QembedError) {
        guard gradDtype.isFloat else { throw .unsupported("grad_dtype: \(gradDtype.name) is not a float type (use f32, f16 or bf16)") }
        try indices.validate(rows: config.numEmbeddings)
        let dim = config.embeddingDim
        let total = try checkedMul(indices.count, dim, "count x embedding_dim")
        _ = try withFloatElement(gradDtype) { (e) throws(QembedError) in try checkFinite(e, gradOutput, total, argument: "grad_output") }
        if indices.count == 0 {
            // torch's gradient of an empty lookup: zeros (dense), an empty
            // sparse gradient; either way the next step counts.
            try lock.withExclusive { () throws(QembedError) in
                guard weight.requiresGrad else { return }
                if config.sparse { weight.sparseGradPresent = true } else { _ = try weight.denseGrad() }
                if let norm { _ = try norm.weight.denseGrad(); _ = try norm.bias.denseGrad() }
            }
            return
        }
        try lock.withExclusive { () throws(QembedError) in
            // Gradient rows as float32: the caller's buffer when it already is
            // f32 and nothing transforms it, else a scratch copy.
            var g = UnsafeMutablePointer(mutating: gradOutput.assumingMemoryBound(to: Float.self))
            if gradDtype != .f32 || norm != nil {
                if (scratch?.byteCount ?? 0) < total * 4 { scratch = try AlignedBuffer(byteCount: total * 4, zeroed: false) }
                g = scratch!.floats()
                loadFloats(gradOutput, gradDtype, total, g)
            }
            if let norm {
                let w = weight
                let rowBytes = dim * w.dtype.size, n = indices.count
                norm.backwardRows(count: n, g: g) { k, x in
                    if k + prefetchDistance < n && rowBytes <= prefetchMaxRowBytes {
                        qembed__prefetch(w.data.raw + indices[k + prefetchDistance] * rowBytes, rowBytes)
                    }
                    loadFloats(w.data.raw + indices[k] * rowBytes, w.dtype, dim, x)
                }
            }
            guard weight.requiresGrad else { return }
            if config.sparse {
                accumulateSparse(indices, g, pad: config.paddingIdx)
            } else {
                accumulateDense(indices, g, into: try weight.denseGrad(), pad: config.paddingIdx)
            }
        }
    }

    /// Per-index scale: 1, or 1 / (count of the index in `indices`: the
    /// batch, or for bags the whole input, trailing indices included).
    private func frequencyScale(_ indices: Indices) -> [Int: Float]? {
        guard config.scaleGradByFreq else { return nil }
        var counts: [Int: Int] = [:]
        for k in 0..<indices.count { counts[indices[k], default: 0] += 1 }
        return counts.mapValues { 1 / Float($0) }
    }

    /// grad[i] += g[k] * scale for indices[k] == i, in batch order per row;
    /// threads own disjoint row ranges, so no two write the same row.
    func accumulateDense(_ indices: Indices, _ g: UnsafeMutablePointer<Float>, into grad: UnsafeMutablePointer<Float>,
                         pad padding: Int?, countIn all: Indices? = nil) {
        let dim = config.embeddingDim, rows = config.numEmbeddings
        let pad = padding ?? -1
        let scales = frequencyScale(all ?? indices)
        let parts = min(Parallel.threadCount, max(1, indices.count * dim / 32768))
        Parallel.forEachChunk(parts, grain: 1) { pr in
            for part in pr {
                let lo = rows * part / parts, hi = rows * (part + 1) / parts
                let n = indices.count, rowBytes = dim * 4
                for k in 0..<n {
                    if k + prefetchDistance < n && rowBytes <= prefetchMaxRowBytes {
                        let ahead = indices[k + prefetchDistance]
                        if ahead >= lo && ahead < hi { qembed__prefetch(grad + ahead * dim, rowBytes) }
                    }
                    let i = indices[k]
                    if i < lo || i >= hi || i == pad { continue }
                    let s = scales?[i] ?? 1
                    let dst = grad + i * dim, src = g + k * dim
                    if s == 1 { for j in 0..<dim { dst[j] += src[j] } } else { for j in 0..<dim { dst[j] += src[j] * s } }
                }
            }
        }
    }

    /// Coalesces this batch's rows and merges them into the sparse gradient.
    /// Rows are independent, so both passes run on all threads; the value
    /// buffers are filled without zeroing them first.
    func accumulateSparse(_ indices: Indices, _ g: UnsafeMutablePointer<Float>, pad padding: Int?, countIn all: Indices? = nil) {
        let dim = config.embeddingDim
        let pad = padding ?? -1
        let scales = frequencyScale(all ?? indices)
        // Sort (row, position) pairs packed in one integer: rows in order,
        // positions in batch order within a row.
        var keys: [UInt64] = []
        keys.reserveCapacity(indices.count)
        for k in 0..<indices.count where indices[k] != pad { keys.append(UInt64(indices[k]) << 32 | UInt64(k)) }
        keys.sort()
        var rows: [Int] = [], starts: [Int] = []   // starts[r]: first key of row r
        rows.reserveCapacity(keys.count)
        starts.reserveCapacity(keys.count + 1)
        for (t, key) in keys.enumerated() where t == 0 || key >> 32 != keys[t - 1] >> 32 {
            rows.append(Int(key >> 32)); starts.append(t)
        }
        starts.append(keys.count)
        let grain = max(1, 16384 / max(dim, 1))
        let values = keys.withUnsafeBufferPointer { kb in
            [Float](unsafeUninitializedCapacity: rows.count * dim) { vb, initialized in
                Parallel.forEachChunk(rows.count, grain: grain) { range in
                    for r in range {
                        let dst = vb.baseAddress! + r * dim
                        let s = scales?[rows[r]] ?? 1
                        for t in starts[r]..<starts[r + 1] {
                            let src = g + Int(kb[t] & 0xFFFF_FFFF) * dim
                            if t == starts[r] {
                                if s == 1 { dst.update(from: src, count: dim) } else { for j in 0..<dim { dst[j] = src[j] * s } }
                            } else {
                                if s == 1 { for j in 0..<dim { dst[j] += src[j] } } else { for j in 0..<dim { dst[j] += src[j] * s } }
                            }
                        }
                    }
                }
                initialized = rows.count * dim
            }
        }
        // Merge with the existing coalesced gradient: rows first, then one
        // exactly sized value buffer filled with row copies or sums.
        let oldRows = weight.sparseRows
        weight.sparseGradPresent = true
        if oldRows.isEmpty { weight.sparseRows = rows; weight.sparseValues = values; return }
        let oldValues = weight.sparseValues
        var mRows: [Int] = []
        var from: [(Int, Int)] = []   // (old row index or -1, new row index or -1)
        mRows.reserveCapacity(oldRows.count + rows.count)
        from.reserveCapacity(oldRows.count + rows.count)
        var a = 0, b = 0
        while a < oldRows.count || b < rows.count {
            if b == rows.count || (a < oldRows.count && oldRows[a] < rows[b]) {
                mRows.append(oldRows[a]); from.append((a, -1)); a += 1
            } else if a == oldRows.count || rows[b] < oldRows[a] {
                mRows.append(rows[b]); from.append((-1, b)); b += 1
            } else {
                mRows.append(rows[b]); from.append((a, b)); a += 1; b += 1
            }
        }
        let mValues = oldValues.withUnsafeBufferPointer { ob in
            values.withUnsafeBufferPointer { nb in
                [Float](unsafeUninitializedCapacity: mRows.count * dim) { mb, initialized in
                    Parallel.forEachChunk(from.count, grain: grain) { range in
                        for r in range {
                            let (ia, ib) = from[r]
                            let dst = mb.baseAddress! + r * dim
                            if ia >= 0 && ib >= 0 {
                                let x = ob.baseAddress! + ia * dim, y = nb.baseAddress! + ib * dim
                                for j in 0..<dim { dst[j] = x[j] + y[j] }
                            } else if ia >= 0 {
                                dst.update(from: ob.baseAddress! + ia * dim, count: dim)
                            } else {
                                dst.update(from: nb.baseAddress! + ib * dim, count: dim)
                            }
                        }
                    }
                    initialized = mRows.count * dim
                }
            }
        }
        weight.sparseRows = mRows
        weight.sparseValues = mValues
    }

    public func zeroGrad() {
        lock.withExclusive { for p in parameters { p.zeroGrad() } }
    }
}

/// v rounded to `dtype` and back to Float.
@inline(__always) func loadRounded(_ v: Float, _ dtype: DType) -> Float {
    switch dtype {
    case .f16: return Float(Float16(v))
    case .bf16: return bf16ToFloat(floatToBF16(v))
    default: return v
    }
}
