import CQembed
import QembedCore

// MARK: - Handles

func handle(_ e: Embedding) -> OpaquePointer { OpaquePointer(Unmanaged.passRetained(e).toOpaque()) }

func embedding(_ p: OpaquePointer?) throws(QembedError) -> Embedding {
    guard let p else { throw QembedError(.nullPointer, "embedding handle is NULL") }
    return Unmanaged<Embedding>.fromOpaque(UnsafeRawPointer(p)).takeUnretainedValue()
}

func checkStructSize(_ have: UInt32, _ want: Int, _ name: StaticString) throws(QembedError) {
    guard Int(have) == want else {
        throw .invalid("\(name)->struct_size is \(have), expected \(want) (initialize it with sizeof)")
    }
}

// MARK: - Embedding

@c @implementation
public func qembed_embedding_params_init(_ p: UnsafeMutablePointer<qembed_embedding_params>!) {
    guard let p else { return }
    var d = qembed_embedding_params()
    d.struct_size = UInt32(MemoryLayout<qembed_embedding_params>.size)
    d.num_embeddings = 0
    d.embedding_dim = 0
    d.padding_idx = Int64.min
    d.max_norm = 0
    d.norm_type = 2
    d.scale_grad_by_freq = false
    d.sparse = false
    d.dtype = DType.f32.rawValue
    d.seed = 0
    d.weight = nil
    d.weight_dtype = DType.f32.rawValue
    d.freeze = false
    p.pointee = d
}

private func create(_ p: UnsafePointer<qembed_embedding_params>?, stable: Bool,
                    _ out: UnsafeMutablePointer<OpaquePointer?>?, shard: (offset: Int64, total: Int64)? = nil) -> qembed_status {
    out?.pointee = nil
    return capi { () throws(QembedError) in
        let o = try need(out, "out")
        let params = try need(p, "p").pointee
        try checkStructSize(params.struct_size, MemoryLayout<qembed_embedding_params>.size, "p")
        let rows = try count(params.num_embeddings, "num_embeddings")
        let dim = try count(params.embedding_dim, "embedding_dim")
        guard !params.max_norm.isNaN && params.max_norm >= 0 else {
            throw .invalid("max_norm must be >= 0 (0 = none), got \(params.max_norm)")
        }
        var rowShard: RowShard? = nil
        var padding: Int? = params.padding_idx == Int64.min ? nil : Int(params.padding_idx)
        if let shard {
            guard shard.total >= 1 && shard.total <= Int64(Int.max) else { throw .invalid("total_rows must be >= 1, got \(shard.total)") }
            rowShard = try RowShard(rowOffset: Int(clamping: shard.offset), totalRows: Int(shard.total), rows: rows)
            _ = try checkedMul(Int(shard.total), dim, "total_rows x embedding_dim")
            // padding_idx names a row of the whole table: this shard's local row, if it holds it.
            if let g = padding {
                let total = Int(shard.total)
                guard g >= -total && g < total else {
                    throw QembedError(.outOfRange, "padding_idx \(g) must be within [-\(total), \(total)) (total_rows)")
                }
                let row = g < 0 ? g + total : g
                padding = row >= rowShard!.rowOffset && row < rowShard!.rowOffset + rows ? row - rowShard!.rowOffset : nil
            }
        }
        let config = try EmbeddingConfig(
            numEmbeddings: rows, embeddingDim: dim,
            paddingIdx: padding,
            maxNorm: params.max_norm > 0 ? params.max_norm : nil, normType: params.norm_type,
            scaleGradByFreq: params.scale_grad_by_freq, sparse: params.sparse,
            dtype: try DType.float(params.dtype, argument: "dtype"))
        let wd = params.weight != nil ? try DType.float(params.weight_dtype, argument: "weight_dtype") : .f32
        let e = try Embedding(config, stable: stable, seed: params.seed, pretrained: params.weight,
                              pretrainedDtype: wd, freeze: params.freeze, shard: rowShard)
        o.pointee = handle(e)
    }
}

@c @implementation
public func qembed_embedding_create_shard(_ p: UnsafePointer<qembed_embedding_params>!, _ stable: Bool, _ row_offset: Int64,
                                          _ total_rows: Int64, _ out: UnsafeMutablePointer<OpaquePointer?>!) -> qembed_status {
    create(p, stable: stable, out, shard: (row_offset, total_rows))
}

@c @implementation
public func qembed_embedding_get_shard(_ e: OpaquePointer!, _ row_offset: UnsafeMutablePointer<Int64>!,
                                       _ total_rows: UnsafeMutablePointer<Int64>!) -> qembed_status {
    capi { () throws(QembedError) in
        let layer = try embedding(e)
        let o = try need(row_offset, "row_offset"), t = try need(total_rows, "total_rows")
        o.pointee = Int64(layer.shard?.rowOffset ?? 0)
        t.pointee = Int64(layer.shard?.totalRows ?? layer.config.numEmbeddings)
    }
}

@c @implementation
public func qembed_embedding_create(_ p: UnsafePointer<qembed_embedding_params>!, _ out: UnsafeMutablePointer<OpaquePointer?>!) -> qembed_status {
    create(p, stable: false, out)
}

@c @implementation
public func qembed_stable_embedding_create(_ p: UnsafePointer<qembed_embedding_params>!, _ out: UnsafeMutablePointer<OpaquePointer?>!) -> qembed_status {
    create(p, stable: true, out)
}

@c @implementation
public func qembed_embedding_free(_ e: OpaquePointer!) {
    guard let e else { return }
    Unmanaged<Embedding>.fromOpaque(UnsafeRawPointer(e)).release()
}

@c @implementation
public func qembed_embedding_get_params(_ e: OpaquePointer!, _ p: UnsafeMutablePointer<qembed_embedding_params>!,
                                        _ is_stable: UnsafeMutablePointer<Bool>!) -> qembed_status {
    capi { () throws(QembedError) in
        let layer = try embedding(e)
        let out = try need(p, "p")
        try checkStructSize(out.pointee.struct_size, MemoryLayout<qembed_embedding_params>.size, "p")
        let c = layer.config
        var d = qembed_embedding_params()
        d.struct_size = out.pointee.struct_size
        d.num_embeddings = Int64(c.numEmbeddings)
        d.embedding_dim = Int64(c.embeddingDim)
        d.padding_idx = c.paddingIdx.map { Int64($0) } ?? Int64.min
        d.max_norm = c.maxNorm ?? 0
        d.norm_type = c.normType
        d.scale_grad_by_freq = c.scaleGradByFreq
        d.sparse = c.sparse
        d.dtype = c.dtype.rawValue
        d.weight = nil
        d.weight_dtype = c.dtype.rawValue
        d.freeze = !layer.weight.requiresGrad
        out.pointee = d
        is_stable?.pointee = layer.isStable
    }
}

func indexArg(_ indices: UnsafeRawPointer?, _ dtype: CInt, _ n: Int64) throws(QembedError) -> Indices {
    let c = try count(n, "count", minimum: 0)
    let d = try DType.from(dtype, argument: "index_dtype")
    let base = c == 0 ? (indices ?? UnsafeRawPointer(bitPattern: 8)!) : try need(indices, "indices")
    _ = try bytes(c, d.size, "indices")
    return try Indices(base, dtype: d, count: c)
}

/// The checked arguments of a lookup into `dim`-wide rows: indices, the
/// output's dtype, and the output (nil for count 0), sized count x dim.
func lookupArgs(_ indices: UnsafeRawPointer?, _ index_dtype: CInt, _ count_: Int64, dim: Int,
                _ out: UnsafeMutableRawPointer?, _ out_dtype: CInt, _ out_len: Int64) throws(QembedError)
    -> (Indices, DType, UnsafeMutableRawPointer?) {
    let idx = try indexArg(indices, index_dtype, count_)
    let od = try DType.float(out_dtype, argument: "out_dtype")
    let needed = try checkedMul(idx.count, dim, "count x embedding_dim")
    _ = try bytes(needed, od.size, "out")
    try capacity(out_len, needed, "out")
    return (idx, od, idx.count == 0 ? nil : try need(out, "out"))
}

/// The checked arguments of a backward over `dim`-wide rows: indices, the
/// gradient's dtype, and the gradient (a dummy pointer for count 0: an empty
/// batch still reaches the layer, as torch's zero / empty sparse gradient).
func gradientArgs(_ indices: UnsafeRawPointer?, _ index_dtype: CInt, _ count_: Int64, dim: Int,
                  _ grad_output: UnsafeRawPointer?, _ grad_dtype: CInt, _ grad_len: Int64) throws(QembedError)
    -> (Indices, DType, UnsafeRawPointer) {
    let idx = try indexArg(indices, index_dtype, count_)
    let gd = try DType.float(grad_dtype, argument: "grad_dtype")
    let needed = try checkedMul(idx.count, dim, "count x embedding_dim")
    _ = try bytes(needed, gd.size, "grad_output")
    guard grad_len == Int64(needed) else {
        throw .shape("grad_output holds \(grad_len) elements but count x embedding_dim = \(needed)")
    }
    let g = idx.count == 0 ? (grad_output ?? UnsafeRawPointer(bitPattern: 8)!) : try need(grad_output, "grad_output")
    return (idx, gd, g)
}

@c @implementation
public func qembed_embedding_forward(_ e: OpaquePointer!, _ indices: UnsafeRawPointer!, _ index_dtype: CInt, _ count_: Int64,
                                     _ out: UnsafeMutableRawPointer!, _ out_dtype: CInt, _ out_len: Int64) -> qembed_status {
    capi { () throws(QembedError) in
        let layer = try embedding(e)
        let (idx, od, o) = try lookupArgs(indices, index_dtype, count_, dim: layer.config.embeddingDim, out, out_dtype, out_len)
        if let o { try layer.forward(idx, out: o, outDtype: od) }
    }
}

@c @implementation
public func qembed_embedding_backward(_ e: OpaquePointer!, _ indices: UnsafeRawPointer!, _ index_dtype: CInt, _ count_: Int64,
                                      _ grad_output: UnsafeRawPointer!, _ grad_dtype: CInt, _ grad_len: Int64) -> qembed_status {
    capi { () throws(QembedError) in
        let layer = try embedding(e)
        let (idx, gd, g) = try gradientArgs(indices, index_dtype, count_, dim: layer.config.embeddingDim,
                                            grad_output, grad_dtype, grad_len)
        try layer.backward(idx, gradOutput: g, gradDtype: gd)
    }
}

@c @implementation
public func qembed_embedding_zero_grad(_ e: OpaquePointer!) -> qembed_status {
    capi { () throws(QembedError) in try embedding(e).zeroGrad() }
}

@c @implementation
public func qembed_embedding_reset_parameters(_ e: OpaquePointer!, _ seed: UInt64) -> qembed_status {
    capi { () throws(QembedError) in try embedding(e).resetParameters(seed: seed) }
}

@c @implementation
public func qembed_embedding_num_params(_ e: OpaquePointer!, _ n: UnsafeMutablePointer<Int64>!) -> qembed_status {
    capi { () throws(QembedError) in
        let layer = try embedding(e)
        try need(n, "n").pointee = Int64(layer.parameters.count)
    }
}

@c @implementation
public func qembed_embedding_param(_ e: OpaquePointer!, _ i: Int64, _ param: UnsafeMutablePointer<OpaquePointer?>!) -> qembed_status {
    capi { () throws(QembedError) in
        let layer = try embedding(e)
        let out = try need(param, "param")
        let ps = layer.parameters
        guard i >= 0 && i < Int64(ps.count) else {
            throw QembedError(.outOfRange, "i = \(i) is out of range: the layer has \(ps.count) parameters")
        }
        out.pointee = borrowed(ps[Int(i)])
    }
}
