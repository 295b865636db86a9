/// Optimizer settings a parameter may override (GlobalOptimManager.override_config).
public enum OverrideKey: Int32, CaseIterable, Sendable {
    case optimBits = 0, lr, beta1, beta2, eps, weightDecay
    public var name: String {
        switch self {
        case .optimBits: "optim_bits"
        case .lr: "lr"
        case .beta1: "beta1"
        case .beta2: "beta2"
        case .eps: "eps"
        case .weightDecay: "weight_decay"
        }
    }

    /// Checks a value for this key.
    public func validate(_ v: Double) throws(QembedError) {
        guard v.isFinite else { throw QembedError(.nonFinite, "\(name) override is \(v) (must be finite)") }
        switch self {
        case .optimBits:
            guard v == 8 || v == 32 else { throw .invalid("optim_bits override must be 8 or 32, got \(v)") }
        case .beta1, .beta2:
            guard v >= 0 && v < 1 else { throw .invalid("\(name) override must be in [0, 1), got \(v)") }
        case .lr, .eps, .weightDecay:
            guard v >= 0 else { throw .invalid("\(name) override must be >= 0, got \(v)") }
        }
    }
}

/// A tensor: data, a float32 dense gradient (allocated by the first dense
/// backward, set by the caller, or wrapping the caller's memory), a coalesced
/// sparse gradient, a name, and per-parameter optimizer overrides. Made by a
/// layer (which shares its lock with it), or standalone: owning zeroed memory
/// or wrapping the caller's (then `data.owned` is false).
public final class Parameter: @unchecked Sendable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    public let numel: Int
    public let data: AlignedBuffer
    public private(set) var grad: AlignedBuffer?
    /// The gradient buffer this parameter allocated, once it has one: kept
    /// (for reuse) when the gradient is cleared or wraps caller memory, so a
    /// pointer to it handed out earlier never dangles.
    private var ownedGrad: AlignedBuffer?
    public var requiresGrad: Bool
    public let sparse: Bool
    /// Made on its own (create or wrap), not by a layer.
    public let standalone: Bool
    /// Sparse gradient: sorted distinct rows and their summed values (rows x shape[1]).
    public internal(set) var sparseRows: [Int] = []
    public internal(set) var sparseValues: [Float] = []
    /// A backward has run since the last zero_grad, even one that touched no
    /// row (an empty batch, all padding, or a row shard no id reached): the
    /// next step counts for this parameter (its step count advances), as
    /// torch's sparse optimizers count an empty sparse gradient.
    public internal(set) var sparseGradPresent = false
    /// The element count optimizers compare with min_8bit_size: numel, or
    /// for a row shard the whole table's (every shard then picks the state
    /// width the unsharded table would get).
    public internal(set) lazy var stateSelectionNumel: Int = numel
    public private(set) var overrides: [OverrideKey: Double] = [:]
    /// The owning layer's lock (a standalone parameter has its own):
    /// mutations of data and grad take it exclusively.
    public let lock: RWLock

    /// A layer's parameter: zeroed memory, the layer's lock.
    public convenience init(name: String, dtype: DType, shape: [Int], requiresGrad: Bool = true, sparse: Bool = false, lock: RWLock) throws(QembedError) {
        try self.init(name: name, dtype: dtype, shape: shape, requiresGrad: requiresGrad, sparse: sparse, lock: lock,
                      wrapping: nil, standalone: false)
    }

    /// A standalone parameter (dense gradient): owns zeroed memory, or wraps
    /// `data`, which must hold numel elements of `dtype`, aligned to the
    /// element size; the caller keeps it alive and unmoved for the
    /// parameter's life. Every dimension must be >= 1.
    public static func standalone(name: String, dtype: DType, shape: [Int], wrapping data: UnsafeMutableRawPointer? = nil) throws(QembedError) -> Parameter {
        guard dtype.isFloat else { throw .unsupported("dtype \(dtype.name): a parameter is f32, f16 or bf16") }
        guard !shape.isEmpty else { throw .shape("\(name): shape has no dimensions") }
        for (k, d) in shape.enumerated() where d < 1 {
            throw .shape("\(name): shape[\(k)] = \(d) (every dimension must be >= 1)")
        }
        if let data, Int(bitPattern: data) % dtype.size != 0 {
            throw .invalid("data: \(name)'s memory at \(data) is not aligned to its \(dtype.size)-byte elements")
        }
        return try Parameter(name: name, dtype: dtype, shape: shape, requiresGrad: true, sparse: false, lock: RWLock(),
                             wrapping: data, standalone: true)
    }

    private init(name: String, dtype: DType, shape: [Int], requiresGrad: Bool, sparse: Bool, lock: RWLock,
                 wrapping: UnsafeMutableRawPointer?, standalone: Bool) throws(QembedError) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        var n = 1
        for d in shape { n = try checkedMul(n, d, "\(name) shape") }
        numel = n
        let bytes = try checkedMul(n, dtype.size, "\(name) bytes")
        if let wrapping {
            data = AlignedBuffer(wrapping: wrapping, byteCount: bytes)
        } else {
            data = try AlignedBuffer(byteCount: bytes)
        }
        self.requiresGrad = requiresGrad
        self.sparse = sparse
        self.standalone = standalone
        self.lock = lock
    }

    public var rows: Int { shape[0] }
    public var cols: Int { shape.count > 1 ? shape[1] : 1 }

    /// The dense gradient, allocated (zeroed) on first use. Call under the exclusive lock.
    public func denseGrad() throws(QembedError) -> UnsafeMutablePointer<Float> {
        if let g = grad { return g.floats() }
        let g = try ownedGradBuffer(zeroed: true)
        grad = g
        return g.floats()
    }

    /// The owned gradient buffer (allocated on first use; zeroed when asked).
    private func ownedGradBuffer(zeroed: Bool) throws(QembedError) -> AlignedBuffer {
        if let g = ownedGrad {
            if zeroed { memsetZero(g.raw, numel * 4) }
            return g
        }
        let g = try AlignedBuffer(byteCount: try checkedMul(numel, 4, "\(name) gradient bytes"), zeroed: zeroed)
        ownedGrad = g
        return g
    }

    /// The dense gradient's values become `count` elements of `srcDtype`
    /// (converted to float32), copied into a buffer the parameter owns (a
    /// wrapped gradient is replaced, not written). Validated first (a dense
    /// parameter, size, finite); unchanged on failure.
    public func setGrad(copying src: UnsafeRawPointer, dtype srcDtype: DType, count: Int) throws(QembedError) {
        try checkDenseGrad(count)
        guard srcDtype.isFloat else { throw .unsupported("grad dtype \(srcDtype.name): a gradient is f32, f16 or bf16") }
        _ = try withFloatElement(srcDtype) { (e) throws(QembedError) in try checkFinite(e, src, count, argument: "\(name).grad") }
        try lock.withExclusive { () throws(QembedError) in
            let g = try ownedGradBuffer(zeroed: false)
            if srcDtype == .f32 {
                g.raw.copyMemory(from: src, byteCount: count * 4)
            } else {
                let f = g.floats()
                for i in 0..<count { f[i] = loadFloat(src, srcDtype, i) }
            }
            grad = g
        }
    }

    /// The dense gradient becomes the caller's memory: `count` (= numel)
    /// float32s, 4-byte aligned, kept alive and unmoved by the caller until the
    /// gradient is replaced or cleared, or the parameter is gone. Not checked
    /// for finiteness here (it may change afterwards): every step checks it.
    public func wrapGrad(_ g: UnsafeMutablePointer<Float>, count: Int) throws(QembedError) {
        try checkDenseGrad(count)
        guard Int(bitPattern: g) % 4 == 0 else { throw .invalid("grad: \(name)'s gradient memory at \(g) is not 4-byte aligned") }
        lock.withExclusive { grad = AlignedBuffer(wrapping: UnsafeMutableRawPointer(g), byteCount: count * 4) }
    }

    /// No gradient (torch's `p.grad = None`): the dense gradient is dropped
    /// (an owned buffer kept for reuse) and the sparse one emptied; the next
    /// step skips the parameter.
    public func clearGrad() {
        lock.withExclusive {
            grad = nil
            sparseGradPresent = false
            sparseRows = []
            sparseValues = []
        }
    }

    private func checkDenseGrad(_ count: Int) throws(QembedError) {
        guard !sparse else { throw .unsupported("\(name) has a sparse gradient: it is set by the layer's backward") }
        guard count == numel else { throw .shape("numel: \(name)'s gradient holds \(numel) elements, got numel = \(count)") }
    }

    public func zeroGrad() {
        if let g = grad { memsetZero(g.raw, numel * 4) }
        sparseGradPresent = false
        sparseRows = []
        sparseValues = []
    }

    public func setOverride(_ key: OverrideKey, _ value: Double) throws(QembedError) {
        try key.validate(value)
        overrides[key] = value
    }

    public func clearOverride(_ key: OverrideKey) { overrides[key] = nil }

    /// Element i of the data as Float.
    @inline(__always) public func value(_ i: Int) -> Float { loadFloat(data.raw, dtype, i) }

    /// Copies `numel` elements of `srcDtype` into the data, converting.
    /// Validates size and finiteness first; unchanged on failure.
    /// `argument` names the caller's source in error messages.
    public func load(_ src: UnsafeRawPointer, dtype srcDtype: DType, count: Int, argument: String = "src") throws(QembedError) {
        guard srcDtype.isFloat else { throw .unsupported("dtype \(srcDtype.name) cannot be loaded into a float parameter") }
        guard count == numel else { throw .shape("numel: \(name) holds \(numel) elements, got numel = \(count)") }
        _ = try withFloatElement(srcDtype) { (e) throws(QembedError) in try checkFinite(e, src, count, argument: argument) }
        if dtype != srcDtype && dtype != .f32 {
            // Narrowing: refuse values that would become inf in the parameter's dtype.
            for i in 0..<count {
                let v = loadFloat(src, srcDtype, i)
                if !loadRounded(v, dtype).isFinite {
                    throw QembedError(.nonFinite, "\(argument)[\(i)] = \(v) overflows \(dtype.name) (the parameter's dtype)")
                }
            }
        }
        lock.withExclusive {
            if srcDtype == dtype {
                data.raw.copyMemory(from: src, byteCount: count * dtype.size)
            } else {
                for i in 0..<count { storeFloat(loadFloat(src, srcDtype, i), data.raw, dtype, i) }
            }
        }
    }
}

@inline(__always) func memsetZero(_ p: UnsafeMutableRawPointer, _ bytes: Int) {
    p.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
}

/// Throws `.nonFinite` naming the first NaN/Inf element; else returns the
/// largest magnitude. Scanned by all threads.
@discardableResult
public func checkFinite<E: FloatElement>(_ e: E.Type, _ p: UnsafeRawPointer, _ count: Int, argument: String) throws(QembedError) -> Double {
    let src = p.assumingMemoryBound(to: E.Storage.self)
    let bits = Absmax.parallelMaxMagnitudeBits(e, src, count)
    if bits >= E.nonFiniteBits {
        throw Absmax.firstNonFinite(e, src, n: count, argument: argument)
    }
    return Double(E.float(fromMagnitudeBits: bits))
}
