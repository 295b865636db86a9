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

/// A tensor owned by a layer: data, a float32 dense gradient (allocated by
/// the first dense backward), a coalesced sparse gradient, a name, and
/// per-parameter optimizer overrides.
public final class Parameter: @unchecked Sendable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    public let numel: Int
    public let data: AlignedBuffer
    public private(set) var grad: AlignedBuffer?
    public var requiresGrad: Bool
    public let sparse: Bool
    /// Sparse gradient: sorted distinct rows and their summed values (rows x shape[1]).
    public internal(set) var sparseRows: [Int] = []
    public internal(set) var sparseValues: [Float] = []
    public private(set) var overrides: [OverrideKey: Double] = [:]
    /// The owning layer's lock: mutations of data and grad take it exclusively.
    public let lock: RWLock

    public init(name: String, dtype: DType, shape: [Int], requiresGrad: Bool = true, sparse: Bool = false, lock: RWLock) throws(QembedError) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        var n = 1
        for d in shape { n = try checkedMul(n, d, "\(name) shape") }
        numel = n
        data = try AlignedBuffer(byteCount: try checkedMul(n, dtype.size, "\(name) bytes"))
        self.requiresGrad = requiresGrad
        self.sparse = sparse
        self.lock = lock
    }

    public var rows: Int { shape[0] }
    public var cols: Int { shape.count > 1 ? shape[1] : 1 }

    /// The dense gradient, allocated (zeroed) on first use. Call under the exclusive lock.
    public func denseGrad() throws(QembedError) -> UnsafeMutablePointer<Float> {
        if let g = grad { return g.floats() }
        let g = try AlignedBuffer(byteCount: try checkedMul(numel, 4, "\(name) gradient bytes"))
        grad = g
        return g.floats()
    }

    public func zeroGrad() {
        if let g = grad { memsetZero(g.raw, numel * 4) }
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
