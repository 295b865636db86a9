import CQembed
import QembedCore

// MARK: - qembed_bags

@c @implementation
public func qembed_bags_init(_ b: UnsafeMutablePointer<qembed_bags>!) {
    guard let b else { return }
    var d = qembed_bags()
    d.struct_size = UInt32(MemoryLayout<qembed_bags>.size)
    d.index_dtype = DType.i64.rawValue
    d.weights_dtype = DType.f32.rawValue
    d.mode = Bags.Mode.mean.rawValue
    d.padding_idx = Int64.min
    b.pointee = d
}

/// A dummy non-NULL address for empty arrays the caller may pass as NULL.
private let emptyArray = UnsafeRawPointer(bitPattern: 8)!

/// The index dtype of a caller's struct (I32 or I64).
private func indexKind(_ raw: CInt) throws(QembedError) -> Bool {
    let d = try DType.from(raw, argument: "bags->index_dtype")
    guard d == .i32 || d == .i64 else { throw .unsupported("bags->index_dtype: \(d.name) is not supported (use i32 or i64)") }
    return d == .i64
}

/// The caller's struct, after its size check.
private func bagsStruct(_ p: UnsafePointer<qembed_bags>?) throws(QembedError) -> qembed_bags {
    let b = try need(p, "bags").pointee
    try checkStructSize(b.struct_size, MemoryLayout<qembed_bags>.size, "bags")
    return b
}

/// The core's Bags from a caller's struct, validated against a table of
/// `rows` rows; padding_idx QEMBED_NO_PADDING means `layerPadding`.
func coreBags(_ p: UnsafePointer<qembed_bags>?, rows: Int, layerPadding: Int?) throws(QembedError) -> Bags {
    let b = try bagsStruct(p)
    let n = try count(b.count, "bags->count", minimum: 0)
    let id = try DType.from(b.index_dtype, argument: "bags->index_dtype")
    let idx = try Indices(n == 0 ? (b.indices ?? emptyArray) : try need(b.indices, "bags->indices"), dtype: id, count: n)
    guard let mode = Bags.Mode(rawValue: b.mode) else {
        throw .unsupported("bags->mode: unknown mode value \(b.mode) (use QEMBED_BAG_SUM, _MEAN or _MAX)")
    }
    var weightsDtype = DType.f32
    if b.per_sample_weights != nil { weightsDtype = try DType.float(b.weights_dtype, argument: "bags->weights_dtype") }
    return try Bags(indices: idx, offsets: b.offsets, numOffsets: try count(b.num_offsets, "bags->num_offsets", minimum: 0),
                    includeLastOffset: b.include_last_offset, numBags: try count(b.num_bags, "bags->num_bags", minimum: 0),
                    weights: b.per_sample_weights, weightsDtype: weightsDtype, mode: mode,
                    paddingIdx: b.padding_idx == Int64.min ? layerPadding : Int(b.padding_idx), rows: rows)
}

@c @implementation
public func qembed_bags_num_bags(_ b: UnsafePointer<qembed_bags>!, _ num_bags: UnsafeMutablePointer<Int64>!) -> qembed_status {
    capi { () throws(QembedError) in
        let out = try need(num_bags, "num_bags")
        let s = try bagsStruct(b)
        let shape = try Bags.shape(count: try count(s.count, "bags->count", minimum: 0), offsets: s.offsets,
                                   is64: try indexKind(s.index_dtype), numOffsets: try count(s.num_offsets, "bags->num_offsets", minimum: 0),
                                   includeLastOffset: s.include_last_offset, numBags: try count(s.num_bags, "bags->num_bags", minimum: 0))
        out.pointee = Int64(shape.numBags)
    }
}

/// Checks an output of num_bags x dim elements of `dtype`.
private func bagOutput(_ bags: Bags, dim: Int, _ len: Int64, _ dtype: DType, _ name: StaticString) throws(QembedError) {
    let needed = try checkedMul(bags.numBags, dim, "num_bags x embedding_dim")
    _ = try bytes(needed, dtype.size, name)
    try capacity(len, needed, name)
}

// MARK: - Float layers

@c @implementation
public func qembed_embedding_bag_forward(_ e: OpaquePointer!, _ b: UnsafePointer<qembed_bags>!,
                                         _ out: UnsafeMutableRawPointer!, _ out_dtype: CInt, _ out_len: Int64) -> qembed_status {
    capi { () throws(QembedError) in
        let l = try embedding(e)
        let od = try DType.float(out_dtype, argument: "out_dtype")
        let bags = try coreBags(b, rows: l.config.numEmbeddings, layerPadding: l.config.paddingIdx)
        try bagOutput(bags, dim: l.config.embeddingDim, out_len, od, "out")
        if bags.numBags == 0 { return }
        try l.bagForward(bags, out: try need(out, "out"), outDtype: od)
    }
}

@c @implementation
public func qembed_embedding_bag_backward(_ e: OpaquePointer!, _ b: UnsafePointer<qembed_bags>!,
                                          _ grad_output: UnsafeRawPointer!, _ grad_dtype: CInt, _ grad_len: Int64,
                                          _ grad_per_sample_weights: UnsafeMutablePointer<Float>!) -> qembed_status {
    capi { () throws(QembedError) in
        let l = try embedding(e)
        let gd = try DType.float(grad_dtype, argument: "grad_dtype")
        let bags = try coreBags(b, rows: l.config.numEmbeddings, layerPadding: l.config.paddingIdx)
        try bagOutput(bags, dim: l.config.embeddingDim, grad_len, gd, "grad_output")
        if grad_per_sample_weights != nil && bags.weights == nil {
            throw .invalid("grad_per_sample_weights is given but bags->per_sample_weights is NULL")
        }
        let g = bags.numBags == 0 ? emptyArray : try need(grad_output, "grad_output")
        try l.bagBackward(bags, gradOutput: g, gradDtype: gd, gradWeights: grad_per_sample_weights)
    }
}

// MARK: - Quantized layers

@c @implementation
public func qembed_qembedding_bag_forward(_ q: OpaquePointer!, _ b: UnsafePointer<qembed_bags>!,
                                          _ out: UnsafeMutableRawPointer!, _ out_dtype: CInt, _ out_len: Int64) -> qembed_status {
    capi { () throws(QembedError) in
        let l = try qembedding(q)
        let od = try DType.float(out_dtype, argument: "out_dtype")
        let bags = try coreBags(b, rows: l.numEmbeddings, layerPadding: nil)
        try bagOutput(bags, dim: l.embeddingDim, out_len, od, "out")
        if bags.numBags == 0 { return }
        try l.bagForward(bags, out: try need(out, "out"), outDtype: od)
    }
}
