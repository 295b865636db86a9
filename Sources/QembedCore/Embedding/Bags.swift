/// The bags of an embedding-bag call (torch.nn.functional.embedding_bag's
/// input, offsets, include_last_offset, per_sample_weights, mode and
/// padding_idx), validated once: bag b holds indices [start(b), end(b)).
///
/// Offsets form: start(b) = offsets[b], end(b) = offsets[b + 1] or, for the
/// last bag, `count` (with include_last_offset: the last offset; indices after
/// it belong to no bag). Fixed form (a 2-D input): numBags bags of
/// count / numBags indices.
public struct Bags {
    public enum Mode: Int32, Sendable, CaseIterable {
        case sum = 0, mean = 1, max = 2
        public var name: String { self == .sum ? "sum" : (self == .mean ? "mean" : "max") }
    }

    public let indices: Indices
    public let mode: Mode
    public let numBags: Int
    /// Per-sample weights (count values, mode sum only) and their dtype.
    public let weights: UnsafeRawPointer?
    public let weightsDtype: DType
    /// Normalized to [0, rows), or nil.
    public let paddingIdx: Int?
    let offsets: UnsafeRawPointer?
    /// Fixed form: the bag length. Offsets form: -1 with include_last_offset
    /// (the last offset ends the last bag), -2 without (count ends it).
    let fixedSize: Int

    /// Validates the shape fields (offsets[0] = 0, non-decreasing, none above
    /// count; fixed form divisible), the mode/weights pairing, padding_idx
    /// against `rows` and that the weights are finite; then every index.
    public init(indices: Indices, offsets: UnsafeRawPointer?, numOffsets: Int, includeLastOffset: Bool, numBags: Int,
                weights: UnsafeRawPointer?, weightsDtype: DType, mode: Mode, paddingIdx: Int?, rows: Int) throws(QembedError) {
        let shape = try Bags.shape(count: indices.count, offsets: offsets, is64: indices.is64, numOffsets: numOffsets,
                                   includeLastOffset: includeLastOffset, numBags: numBags)
        self.numBags = shape.numBags
        self.fixedSize = shape.fixedSize
        self.offsets = offsets
        if weights != nil {
            guard mode == .sum else {
                throw .invalid("per_sample_weights is only supported for mode 'sum' (got mode '\(mode.name)')")
            }
            guard weightsDtype.isFloat else {
                throw .unsupported("weights_dtype: \(weightsDtype.name) is not a float type (use f32, f16 or bf16)")
            }
        }
        if var p = paddingIdx {
            guard p >= -rows && p < rows else {
                throw QembedError(.outOfRange, "padding_idx \(p) must be within [-\(rows), \(rows))")
            }
            if p < 0 { p += rows }
            self.paddingIdx = p
        } else {
            self.paddingIdx = nil
        }
        self.indices = indices
        self.mode = mode
        self.weights = weights
        self.weightsDtype = weightsDtype
        try indices.validate(rows: rows)
        if let weights {
            _ = try withFloatElement(weightsDtype) { (e) throws(QembedError) in
                try checkFinite(e, weights, indices.count, argument: "per_sample_weights")
            }
        }
    }

    /// The number of bags and the fixedSize field for a bag layout, after
    /// checking it: offsets[0] = 0, non-decreasing, none above count; the
    /// fixed form divisible.
    public static func shape(count: Int, offsets: UnsafeRawPointer?, is64: Bool, numOffsets: Int, includeLastOffset: Bool,
                             numBags: Int) throws(QembedError) -> (numBags: Int, fixedSize: Int) {
        guard count >= 0 else { throw .invalid("count must be >= 0, got \(count)") }
        guard let offsets else {
            guard !includeLastOffset else { throw .invalid("include_last_offset needs offsets") }
            guard numOffsets == 0 else { throw QembedError(.nullPointer, "offsets is NULL but num_offsets is \(numOffsets)") }
            guard numBags >= 0 else { throw .invalid("num_bags must be >= 0, got \(numBags)") }
            if numBags == 0 {
                guard count == 0 else { throw .shape("fixed-length bags: num_bags is 0 but count is \(count)") }
                return (0, 0)
            }
            guard count % numBags == 0 else { throw .shape("fixed-length bags: count \(count) is not a multiple of num_bags \(numBags)") }
            return (numBags, count / numBags)
        }
        guard numBags == 0 else { throw .invalid("num_bags is for the fixed form (offsets NULL); it must be 0 with offsets, got \(numBags)") }
        guard numOffsets >= 0 else { throw .invalid("num_offsets must be >= 0, got \(numOffsets)") }
        if includeLastOffset && numOffsets < 1 { throw .invalid("include_last_offset: number of offsets should be at least 1") }
        let o = Indices(unchecked: offsets, is64: is64, count: numOffsets)
        var prev = 0
        for b in 0..<numOffsets {
            let v = o[b]
            if b == 0 && v != 0 {
                throw QembedError(.outOfRange, "offsets[0] has to be 0 (the first bag starts at position 0), got \(v)")
            }
            if v < prev { throw QembedError(.outOfRange, "offsets must be non-decreasing: offsets[\(b)] = \(v) < offsets[\(b - 1)] = \(prev)") }
            if v > count { throw QembedError(.outOfRange, "offsets[\(b)] = \(v) is greater than the number of indices \(count)") }
            prev = v
        }
        return (includeLastOffset ? numOffsets - 1 : numOffsets, includeLastOffset ? -1 : -2)
    }

    @inline(__always) public func start(_ b: Int) -> Int {
        if offsets == nil { return b * fixedSize }
        return offsetValue(b)
    }

    @inline(__always) public func end(_ b: Int) -> Int {
        if offsets == nil { return (b + 1) * fixedSize }
        if b + 1 < numBags || fixedSize == -1 { return offsetValue(b + 1) }
        return indices.count
    }

    @inline(__always) private func offsetValue(_ b: Int) -> Int {
        indices.is64 ? Int(offsets!.load(fromByteOffset: b * 8, as: Int64.self))
                     : Int(offsets!.load(fromByteOffset: b * 4, as: Int32.self))
    }

    /// Indices [0, bagged) belong to some bag (bags tile a prefix of the input).
    public var bagged: Int { numBags == 0 ? 0 : end(numBags - 1) }

    /// The per-sample weight of index k (1 without weights).
    @inline(__always) public func weight(_ k: Int) -> Float {
        guard let weights else { return 1 }
        return loadFloat(weights, weightsDtype, k)
    }

    /// The number of non-padding indices in bag b.
    @inline(__always) public func nonPadding(_ b: Int) -> Int {
        let lo = start(b), hi = end(b)
        guard let p = paddingIdx else { return hi - lo }
        var n = 0
        for k in lo..<hi where indices[k] != p { n += 1 }
        return n
    }

    /// Calls body(b) for every bag, on all threads, bags split so that chunks
    /// hold about the same number of indices.
    public func forEachBag(dim: Int, _ body: (Int) -> Void) {
        let work = max(1, bagged * max(dim, 1))
        let grain = max(1, numBags * 16384 / work)
        Parallel.forEachChunk(numBags, grain: grain) { range in
            for b in range { body(b) }
        }
    }
}
