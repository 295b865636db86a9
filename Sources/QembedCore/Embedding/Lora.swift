import CQembedSIMD
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A frozen table LoRA can adapt: a float Embedding or a quantized one.
public enum LoraBase: @unchecked Sendable {
    case float(Embedding)
    case quantized(QuantizedEmbedding)

    public var numEmbeddings: Int {
        switch self { case .float(let e): e.config.numEmbeddings; case .quantized(let q): q.numEmbeddings }
    }
    public var embeddingDim: Int {
        switch self { case .float(let e): e.config.embeddingDim; case .quantized(let q): q.embeddingDim }
    }
    /// Rows of the base as float32 (the frozen table's own lookup).
    func forward(_ indices: Indices, out: UnsafeMutablePointer<Float>) throws(QembedError) {
        switch self {
        case .float(let e): try e.forward(indices, out: UnsafeMutableRawPointer(out), outDtype: .f32)
        case .quantized(let q): try q.forward(indices, out: UnsafeMutableRawPointer(out), outDtype: .f32)
        }
    }
}

/// peft's LoRA over an embedding table (peft.tuners.lora.layer.Embedding):
///
///     out = base(ids) + (A^T[ids] @ B^T) * scaling,  scaling = alpha / r (alpha / sqrt(r) with rslora)
///
/// with peft's lora_embedding_A (r x num_embeddings, zeros at init) and
/// lora_embedding_B (embedding_dim x r, standard normal at init). The base is
/// frozen. The two parameters are held in the layout peft's forward itself
/// uses, A^T (num_embeddings x r: one row per id, so a lookup reads r
/// contiguous floats and a sparse gradient is a set of rows) and B^T
/// (r x embedding_dim); saving transposes them to peft's tensors.
///
/// A^T is looked up as peft does, through F.embedding with the base's
/// padding_idx (no gradient into that row), scale_grad_by_freq and sparse
/// (a sparse base gives A^T a sparse gradient); max_norm is refused (peft
/// would renormalize A^T's rows in place).
///
/// Thread safety: forwards share a lock and run in parallel; backward,
/// zero_grad and loads of the parameters are serialized with them.
public final class LoraEmbedding: @unchecked Sendable {
    public let base: LoraBase
    public let r: Int
    public let alpha: Double
    public let useRslora: Bool
    public let seed: UInt64
    public let scaling: Float
    /// A^T as an embedding table of width r (padding, frequency scaling and
    /// sparse gradients exactly as the base's lookup).
    let a: Embedding
    public var aT: Parameter { a.weight }
    /// B^T: r x embedding_dim, dense gradient; shares A^T's lock.
    public let bT: Parameter
    public var parameters: [Parameter] { [aT, bT] }
    public var numEmbeddings: Int { base.numEmbeddings }
    public var embeddingDim: Int { base.embeddingDim }

    public init(base: LoraBase, r: Int, alpha: Double, useRslora: Bool, seed: UInt64) throws(QembedError) {
        guard r >= 1 else { throw .invalid("r must be >= 1, got \(r)") }
        guard alpha.isFinite else { throw QembedError(.nonFinite, "lora_alpha is \(alpha) (must be finite)") }
        var pad: Int? = nil, freq = false, sparse = false
        if case .float(let e) = base {
            guard e.config.maxNorm == nil else {
                throw .unsupported("the base table has max_norm: LoRA over it would renormalize lora_embedding_A in place (peft's behaviour); not supported")
            }
            pad = e.config.paddingIdx; freq = e.config.scaleGradByFreq; sparse = e.config.sparse
        }
        self.base = base
        self.r = r
        self.alpha = alpha
        self.useRslora = useRslora
        self.seed = seed
        scaling = Float(useRslora ? alpha / Double(r).squareRoot() : alpha / Double(r))
        let rows = base.numEmbeddings, dim = base.embeddingDim
        _ = try checkedMul(try checkedMul(rows, r, "num_embeddings x r"), 4, "lora_embedding_A bytes")
        let zeros = try AlignedBuffer(byteCount: try checkedMul(rows, r * 4, "lora_embedding_A bytes"))
        a = try Embedding(EmbeddingConfig(numEmbeddings: rows, embeddingDim: r, paddingIdx: pad, scaleGradByFreq: freq, sparse: sparse),
                          pretrained: zeros.raw, pretrainedDtype: .f32, weightName: "lora_embedding_A")
        a.weight.clearOverride(.optimBits)  // optimizers choose (8-bit when large enough)
        bT = try Parameter(name: "lora_embedding_B", dtype: .f32, shape: [r, dim], lock: a.lock)
        LoraEmbedding.fillNormal(bT.data.floats(), bT.numel, seed: seed)
    }

    /// Standard normal draws (Box-Muller over SplitMix64): peft's
    /// nn.init.normal_ for lora_embedding_B, from qembed's own generator.
    public static func fillNormal(_ p: UnsafeMutablePointer<Float>, _ n: Int, seed: UInt64) {
        var s = seed &+ 0x9E37_79B9_7F4A_7C15
        func next() -> Double {
            s = s &+ 0x9E37_79B9_7F4A_7C15
            var z = s
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            z ^= z >> 31
            return (Double(z >> 11) + 0.5) / Double(1 << 53)  // (0, 1)
        }
        var i = 0
        while i < n {
            let u = next(), v = next()
            let rad = (-2 * log(u)).squareRoot(), t = 2 * Double.pi * v
            p[i] = Float(rad * cos(t))
            if i + 1 < n { p[i + 1] = Float(rad * sin(t)) }
            i += 2
        }
    }

    // MARK: Forward

    /// out[k] = base row + (A^T[ids[k]] @ B^T) * scaling, as outDtype.
    public func forward(_ indices: Indices, out: UnsafeMutableRawPointer, outDtype: DType) throws(QembedError) {
        guard outDtype.isFloat else { throw .unsupported("out_dtype: \(outDtype.name) is not a float type (use f32, f16 or bf16)") }
        try indices.validate(rows: numEmbeddings)
        let n = indices.count, dim = embeddingDim
        if n == 0 { return }
        let total = try checkedMul(n, dim, "count x embedding_dim")
        let scratch = outDtype == .f32 ? nil : try AlignedBuffer(byteCount: try checkedMul(total, 4, "out bytes"), zeroed: false)
        let rows = scratch?.floats() ?? out.assumingMemoryBound(to: Float.self)
        // Tiles of rows, so the update adds to rows still in cache: the base's
        // lookup writes a tile, the update reads and rewrites it from L2/L3
        // instead of a second pass over the whole output in memory.
        // One parallel loop over the rows; each thread runs the base's lookup
        // and the update on its own tiles (nested loops run inline).
        let tile = max(16, (256 << 10) / (dim * 4))
        let failure = Mutex<QembedError?>(nil)
        if a.lock.withShared({ fusedForward(indices, rows) }) {
            if let scratch { storeFloats(scratch.floats(), total, out, outDtype) }
            return
        }
        a.lock.withShared {
            Parallel.forEachChunk(n, grain: tile) { range in
                var t = range.lowerBound
                while t < range.upperBound {
                    let m = min(tile, range.upperBound - t)
                    let sub = indices.slice(t, m)
                    do throws(QembedError) { try base.forward(sub, out: rows + t * dim) } catch {
                        failure.withLock { $0 = error }
                        return
                    }
                    addDelta(sub, rows + t * dim)
                    t += m
                }
            }
        }
        if let e = failure.withLock({ $0 }) { throw e }
        if let scratch { storeFloats(scratch.floats(), total, out, outDtype) }
    }

    /// The AVX-512 kernel, or else the AVX2 one (qembed_lora.h): rows[k] =
    /// base row + update, each row stored once, equal bit for bit to the
    /// base's lookup followed by addDeltaSmallRank; false (nothing written)
    /// when neither has a form for this base, rank or CPU. Call under the lock.
    private func fusedForward(_ indices: Indices, _ rows: UnsafeMutablePointer<Float>) -> Bool {
        let dim = embeddingDim
        guard r <= 8, dim % 16 == 0 else { return false }
        let at = UnsafePointer(aT.data.floats()), bt = UnsafePointer(bT.data.floats())
        let rank = r, s = scaling
        func run(_ src: any BagRowSource) -> Bool {
            guard var k = src.bagKernelRows else { return false }
            let kernel: (UnsafePointer<qembed__bag_rows>?, UnsafeRawPointer?, Int32, Int, UnsafePointer<Float>?, Int,
                         UnsafePointer<Float>?, Float, UnsafeMutablePointer<Float>?) -> Int32
            if qembed__avx512_enabled() != 0 && qembed__bag512_supported(&k) != 0 {
                kernel = qembed__lora512_forward
            } else if qembed__bag256_supported(&k) != 0 {
                kernel = qembed__lora256_forward
            } else {
                return false
            }
            // Probe with no ids: 0 when the kernel has no form for these rows (or no FMA).
            if kernel(&k, indices.base, indices.is64 ? 1 : 0, 0, at, rank, bt, s, rows) == 0 { return false }
            let width = indices.is64 ? 8 : 4
            Parallel.forEachChunk(indices.count, grain: max(2, 16384 / dim)) { range in
                var kk = k
                _ = kernel(&kk, indices.base + range.lowerBound * width, indices.is64 ? 1 : 0, range.count,
                           at, rank, bt, s, rows + range.lowerBound * dim)
            }
            return true
        }
        switch base {
        case .quantized(let q):
            return q.withRows { run($0) }
        case .float(let e):
            guard !e.isStable, e.weight.dtype == .f32 else { return false }
            return e.lock.withShared { run(FloatRows<F32>(base: UnsafePointer(e.weight.data.floats()), dim: dim)) }
        }
    }

    /// rows[k] += (A^T[ids[k]] @ B^T) * scaling. Call under the lock.
    /// Four rows at a time share every load of B^T (16 lanes, fused
    /// multiply-adds); B^T (r x dim floats) stays in L1/L2.
    private func addDelta(_ indices: Indices, _ rows: UnsafeMutablePointer<Float>) {
        let dim = embeddingDim, r = self.r, s = scaling
        let at = aT.data.floats(), bt = bT.data.floats()
        if r <= 8 && dim % 16 == 0 { return addDeltaSmallRank(indices, rows) }
        Parallel.forEachChunk(indices.count, grain: max(4, 16384 / dim)) { range in
            let av = UnsafeMutablePointer<Float>.allocate(capacity: 4 * r)
            defer { av.deallocate() }
            var k = range.lowerBound
            while k < range.upperBound {
                let q = min(4, range.upperBound - k)
                for u in 0..<4 {
                    let src = at + indices[k + min(u, q - 1)] * r
                    for j in 0..<r { av[u * r + j] = u < q ? src[j] : 0 }
                }
                let d0 = rows + k * dim, d1 = rows + (k + min(1, q - 1)) * dim
                let d2 = rows + (k + min(2, q - 1)) * dim, d3 = rows + (k + min(3, q - 1)) * dim
                var d = 0
                while d + 16 <= dim {
                    var a0 = SIMD16<Float>(repeating: 0), a1 = a0, a2 = a0, a3 = a0
                    for j in 0..<r {
                        let b = load16(bt + j * dim + d)
                        a0 = a0.addingProduct(av[j], b)
                        a1 = a1.addingProduct(av[r + j], b)
                        a2 = a2.addingProduct(av[2 * r + j], b)
                        a3 = a3.addingProduct(av[3 * r + j], b)
                    }
                    // (rows beyond q alias the last real row and are not stored)
                    if q == 4 { store16(load16(d3 + d).addingProduct(a3, s), d3 + d) }
                    if q >= 3 { store16(load16(d2 + d).addingProduct(a2, s), d2 + d) }
                    if q >= 2 { store16(load16(d1 + d).addingProduct(a1, s), d1 + d) }
                    store16(load16(d0 + d).addingProduct(a0, s), d0 + d)
                    d += 16
                }
                while d < dim {
                    for u in 0..<q {
                        var acc: Float = 0
                        for j in 0..<r { acc = acc.addingProduct(av[u * r + j], bt[j * dim + d]) }
                        rows[(k + u) * dim + d] = rows[(k + u) * dim + d].addingProduct(acc, s)
                    }
                    d += 1
                }
                k += q
            }
        }
    }

    /// addDelta for r <= 8 and dim a multiple of 16: two rows at a time,
    /// their (zero-padded) A^T entries held as 16 broadcast registers for
    /// the whole row, so the inner loop is 8 loads of B^T and 16 register
    /// FMAs per 32 outputs.
    private func addDeltaSmallRank(_ indices: Indices, _ rows: UnsafeMutablePointer<Float>) {
        let dim = embeddingDim, r = self.r, s = scaling
        let at = aT.data.floats(), bt = bT.data.floats()
        let zero = SIMD16<Float>(repeating: 0)
        @inline(__always) func b(_ j: Int, _ d: Int) -> SIMD16<Float> { j < r ? load16(bt + j * dim + d) : zero }
        @inline(__always) func a(_ src: UnsafePointer<Float>, _ j: Int) -> SIMD16<Float> {
            j < r ? SIMD16(repeating: src[j] * s) : zero
        }
        Parallel.forEachChunk(indices.count, grain: max(2, 16384 / dim)) { range in
            var k = range.lowerBound
            while k < range.upperBound {
                let two = k + 1 < range.upperBound
                let p = UnsafePointer(at + indices[k] * r), q = UnsafePointer(at + indices[two ? k + 1 : k] * r)
                let p0 = a(p, 0), p1 = a(p, 1), p2 = a(p, 2), p3 = a(p, 3), p4 = a(p, 4), p5 = a(p, 5), p6 = a(p, 6), p7 = a(p, 7)
                let q0 = a(q, 0), q1 = a(q, 1), q2 = a(q, 2), q3 = a(q, 3), q4 = a(q, 4), q5 = a(q, 5), q6 = a(q, 6), q7 = a(q, 7)
                let d0 = rows + k * dim, d1 = rows + (two ? k + 1 : k) * dim
                var d = 0
                while d < dim {
                    let b0 = b(0, d), b1 = b(1, d), b2 = b(2, d), b3 = b(3, d), b4 = b(4, d), b5 = b(5, d), b6 = b(6, d), b7 = b(7, d)
                    var x = p0 * b0
                    x = x.addingProduct(p1, b1); x = x.addingProduct(p2, b2); x = x.addingProduct(p3, b3)
                    x = x.addingProduct(p4, b4); x = x.addingProduct(p5, b5); x = x.addingProduct(p6, b6); x = x.addingProduct(p7, b7)
                    store16(load16(d0 + d) + x, d0 + d)
                    if two {
                        var y = q0 * b0
                        y = y.addingProduct(q1, b1); y = y.addingProduct(q2, b2); y = y.addingProduct(q3, b3)
                        y = y.addingProduct(q4, b4); y = y.addingProduct(q5, b5); y = y.addingProduct(q6, b6); y = y.addingProduct(q7, b7)
                        store16(load16(d1 + d) + y, d1 + d)
                    }
                    d += 16
                }
                k += two ? 2 : 1
            }
        }
    }

    @inline(__always) private func load16(_ p: UnsafePointer<Float>) -> SIMD16<Float> {
        UnsafeRawPointer(p).loadUnaligned(as: SIMD16<Float>.self)
    }
    @inline(__always) private func store16(_ v: SIMD16<Float>, _ p: UnsafeMutablePointer<Float>) {
        UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD16<Float>.self)
    }

    // MARK: Backward

    /// Accumulates the gradients of A^T and B^T for grad_output (count x dim).
    public func backward(_ indices: Indices, gradOutput: UnsafeRawPointer, gradDtype: DType) throws(QembedError) {
        guard gradDtype.isFloat else { throw .unsupported("grad_dtype: \(gradDtype.name) is not a float type (use f32, f16 or bf16)") }
        try indices.validate(rows: numEmbeddings)
        let n = indices.count, dim = embeddingDim, r = self.r
        let total = try checkedMul(n, dim, "count x embedding_dim")
        _ = try withFloatElement(gradDtype) { (e) throws(QembedError) in try checkFinite(e, gradOutput, total, argument: "grad_output") }
        if n == 0 {  // an empty batch still counts: zero / empty gradients, as for the layers
            try a.lock.withExclusive { () throws(QembedError) in _ = try bT.denseGrad() }
            try a.backward(indices, gradOutput: gradOutput, gradDtype: .f32)
            return
        }
        let gbuf = gradDtype == .f32 ? nil : try AlignedBuffer(byteCount: total * 4, zeroed: false)
        if let gbuf { loadFloats(gradOutput, gradDtype, total, gbuf.floats()) }
        let g = UnsafePointer(gbuf?.floats() ?? UnsafeMutablePointer(mutating: gradOutput.assumingMemoryBound(to: Float.self)))
        let gA = try AlignedBuffer(byteCount: try checkedMul(n, r * 4, "count x r bytes"), zeroed: false)
        let s = scaling
        try a.lock.withExclusive { () throws(QembedError) in
            let at = aT.data.floats(), bt = bT.data.floats()
            // d after_A = (G * scaling) @ B: one dot product per (row, j).
            let ga = gA.floats()
            Parallel.forEachChunk(n, grain: max(1, 8192 / dim)) { range in
                for k in range {
                    let gk = g + k * dim
                    for j in 0..<r { ga[k * r + j] = LoraEmbedding.dot(gk, bt + j * dim, dim) * s }
                }
            }
            // d B^T += after_A^T @ (G * scaling), split over column ranges.
            let gb = try bT.denseGrad()
            let chunks = max(1, min(Parallel.threadCount * 4, dim / 64))
            Parallel.forEachChunk(chunks, grain: 1) { cr in
                for c in cr {
                    let lo = dim * c / chunks, hi = dim * (c + 1) / chunks
                    for k in 0..<n {
                        let src = at + indices[k] * r, gk = g + k * dim
                        for j in 0..<r {
                            let w = src[j] * s
                            if w == 0 { continue }
                            let dst = gb + j * dim
                            for d in lo..<hi { dst[d] += w * gk[d] }
                        }
                    }
                }
            }
        }
        // A^T's gradient through its own lookup rules (padding, frequency, sparse).
        try a.backward(indices, gradOutput: UnsafeRawPointer(gA.raw), gradDtype: .f32)
    }

    @inline(__always)
    static func dot(_ x: UnsafePointer<Float>, _ y: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = SIMD8<Float>(repeating: 0), d = 0
        while d + 8 <= n { acc += load8(x + d) * load8(y + d); d += 8 }
        var t = acc.sum()
        while d < n { t += x[d] * y[d]; d += 1 }
        return t
    }

    public func zeroGrad() {
        a.zeroGrad()
        a.lock.withExclusive { bT.zeroGrad() }
    }

    // MARK: Merge

    /// The adapted table, every row: base + (A^T @ B^T) * scaling (peft's
    /// merge: W + delta), as outDtype.
    public func merged(out: UnsafeMutableRawPointer, outDtype: DType) throws(QembedError) {
        let rows = numEmbeddings
        let ids = try AlignedBuffer(byteCount: try checkedMul(rows, 8, "num_embeddings ids"), zeroed: false)
        let p = ids.raw.assumingMemoryBound(to: Int64.self)
        for i in 0..<rows { p[i] = Int64(i) }
        try forward(Indices(unchecked: ids.raw, is64: true, count: rows), out: out, outDtype: outDtype)
    }
}
