import CQembed
import QembedCore

// MARK: - LoRA over a frozen table

func lora(_ p: OpaquePointer?) throws(QembedError) -> LoraEmbedding {
    guard let p else { throw QembedError(.nullPointer, "lora handle is NULL") }
    return Unmanaged<LoraEmbedding>.fromOpaque(UnsafeRawPointer(p)).takeUnretainedValue()
}

@c @implementation
public func qembed_lora_params_init(_ p: UnsafeMutablePointer<qembed_lora_params>!) {
    guard let p else { return }
    var d = qembed_lora_params()
    d.struct_size = UInt32(MemoryLayout<qembed_lora_params>.size)
    d.r = 8
    d.lora_alpha = 8
    d.use_rslora = false
    d.seed = 0
    p.pointee = d
}

@c @implementation
public func qembed_lora_create(_ p: UnsafePointer<qembed_lora_params>!, _ float_base: OpaquePointer!, _ quantized_base: OpaquePointer!,
                               _ out: UnsafeMutablePointer<OpaquePointer?>!) -> qembed_status {
    capi { () throws(QembedError) in
        let o = try need(out, "out")
        o.pointee = nil
        let d = try need(p, "p").pointee
        try checkStructSize(d.struct_size, MemoryLayout<qembed_lora_params>.size, "p")
        let base: LoraBase
        switch (float_base, quantized_base) {
        case (let f?, nil): base = .float(try embedding(f))
        case (nil, let q?): base = .quantized(try qembedding(q))
        case (nil, nil): throw QembedError(.nullPointer, "float_base and quantized_base are both NULL (pass exactly one)")
        default: throw .invalid("float_base and quantized_base are both set (pass exactly one)")
        }
        guard d.r >= 1 && d.r <= 1 << 20 else { throw .invalid("r must be in [1, 2^20], got \(d.r)") }
        let l = try LoraEmbedding(base: base, r: Int(d.r), alpha: d.lora_alpha, useRslora: d.use_rslora, seed: d.seed)
        o.pointee = OpaquePointer(Unmanaged.passRetained(l).toOpaque())
    }
}

@c @implementation
public func qembed_lora_free(_ l: OpaquePointer!) {
    guard let l else { return }
    Unmanaged<LoraEmbedding>.fromOpaque(UnsafeRawPointer(l)).release()
}

@c @implementation
public func qembed_lora_get_params(_ l: OpaquePointer!, _ p: UnsafeMutablePointer<qembed_lora_params>!,
                                   _ scaling: UnsafeMutablePointer<Double>!) -> qembed_status {
    capi { () throws(QembedError) in
        let layer = try lora(l)
        let out = try need(p, "p")
        try checkStructSize(out.pointee.struct_size, MemoryLayout<qembed_lora_params>.size, "p")
        var d = qembed_lora_params()
        d.struct_size = out.pointee.struct_size
        d.r = Int64(layer.r)
        d.lora_alpha = layer.alpha
        d.use_rslora = layer.useRslora
        d.seed = layer.seed
        out.pointee = d
        if let scaling { scaling.pointee = Double(layer.scaling) }
    }
}

@c @implementation
public func qembed_lora_forward(_ l: OpaquePointer!, _ indices: UnsafeRawPointer!, _ index_dtype: CInt, _ count_: Int64,
                                _ out: UnsafeMutableRawPointer!, _ out_dtype: CInt, _ out_len: Int64) -> qembed_status {
    capi { () throws(QembedError) in
        let layer = try lora(l)
        let (idx, od, o) = try lookupArgs(indices, index_dtype, count_, dim: layer.embeddingDim, out, out_dtype, out_len)
        if let o { try layer.forward(idx, out: o, outDtype: od) }
    }
}

@c @implementation
public func qembed_lora_backward(_ l: OpaquePointer!, _ indices: UnsafeRawPointer!, _ index_dtype: CInt, _ count_: Int64,
                                 _ grad_output: UnsafeRawPointer!, _ grad_dtype: CInt, _ grad_len: Int64) -> qembed_status {
    capi { () throws(QembedError) in
        let layer = try lora(l)
        let (idx, gd, g) = try gradientArgs(indices, index_dtype, count_, dim: layer.embeddingDim, grad_output, grad_dtype, grad_len)
        try layer.backward(idx, gradOutput: g, gradDtype: gd)
    }
}

@c @implementation
public func qembed_lora_zero_grad(_ l: OpaquePointer!) -> qembed_status {
    capi { () throws(QembedError) in try lora(l).zeroGrad() }
}

@c @implementation
public func qembed_lora_param(_ l: OpaquePointer!, _ i: Int64, _ param: UnsafeMutablePointer<OpaquePointer?>!) -> qembed_status {
    capi { () throws(QembedError) in
        let layer = try lora(l)
        let out = try need(param, "param")
        guard i >= 0 && i < 2 else { throw QembedError(.outOfRange, "i = \(i) is out of range: a LoRA layer has 2 parameters") }
        out.pointee = borrowed(layer.parameters[Int(i)])
    }
}

@c @implementation
public func qembed_lora_merge(_ l: OpaquePointer!, _ out: UnsafeMutableRawPointer!, _ out_dtype: CInt, _ out_len: Int64) -> qembed_status {
    capi { () throws(QembedError) in
        let layer = try lora(l)
        let od = try DType.float(out_dtype, argument: "out_dtype")
        let needed = try checkedMul(layer.numEmbeddings, layer.embeddingDim, "num_embeddings x embedding_dim")
        _ = try bytes(needed, od.size, "out")
        try capacity(out_len, needed, "out")
        try layer.merged(out: try need(out, "out"), outDtype: od)
    }
}
