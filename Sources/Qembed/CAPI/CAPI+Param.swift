import Synchronization
import CQembed
import QembedCore

// MARK: - Handles

func parameter(_ p: OpaquePointer?) throws(QembedError) -> Parameter {
    guard let p else { throw QembedError(.nullPointer, "param handle is NULL") }
    return Unmanaged<Parameter>.fromOpaque(UnsafeRawPointer(p)).takeUnretainedValue()
}

func borrowed(_ p: Parameter) -> OpaquePointer { OpaquePointer(Unmanaged.passUnretained(p).toOpaque()) }

/// A standalone parameter's handle: one retain, released by qembed_param_free.
func owned(_ p: Parameter) -> OpaquePointer { OpaquePointer(Unmanaged.passRetained(p).toOpaque()) }

// MARK: - Parameters

/// Parameter names as C strings for qembed_param_info.name: interned, so
/// each pointer lives for the process. Layer names are few ("weight",
/// "norm.weight", "norm.bias"); a standalone parameter's name is interned the
/// first time its info is read (one copy per distinct name).
private let cNames = Mutex<[String: Int]>([:])

func internedCName(_ name: String) -> UnsafePointer<CChar> {
    let address = cNames.withLock { table -> Int in
        if let a = table[name] { return a }
        let a = Int(bitPattern: cStringCopy(name))
        table[name] = a
        return a
    }
    return UnsafePointer(bitPattern: address)!
}

@c @implementation
public func qembed_param_info_get(_ param: OpaquePointer!, _ info: UnsafeMutablePointer<qembed_param_info>!) -> qembed_status {
    capi { () throws(QembedError) in
        let p = try parameter(param)
        let out = try need(info, "info")
        try checkStructSize(out.pointee.struct_size, MemoryLayout<qembed_param_info>.size, "info")
        var i = qembed_param_info()
        i.struct_size = out.pointee.struct_size
        i.name = internedCName(p.name)
        i.dtype = p.dtype.rawValue
        i.ndim = Int32(p.shape.count)
        i.shape = (Int64(p.rows), Int64(p.cols))
        i.numel = Int64(p.numel)
        i.data = p.data.raw
        i.grad = p.grad?.floats()
        i.requires_grad = p.requiresGrad
        i.sparse = p.sparse
        out.pointee = i
    }
}

@c @implementation
public func qembed_param_sparse_grad(_ param: OpaquePointer!, _ nnz_rows: UnsafeMutablePointer<Int64>!,
                                     _ rows: UnsafeMutablePointer<Int64>!, _ rows_cap: Int64,
                                     _ values: UnsafeMutablePointer<Float>!, _ values_cap: Int64) -> qembed_status {
    capi { () throws(QembedError) in
        let p = try parameter(param)
        let nnz = try need(nnz_rows, "nnz_rows")
        try p.lock.withShared { () throws(QembedError) in
            let r = p.sparseRows, v = p.sparseValues
            if rows != nil || values != nil {
                let ro = try need(rows, "rows"), vo = try need(values, "values")
                try capacity(rows_cap, r.count, "rows")
                try capacity(values_cap, v.count, "values")
                for (k, x) in r.enumerated() { ro[k] = Int64(x) }
                v.withUnsafeBufferPointer { if let b = $0.baseAddress { vo.update(from: b, count: $0.count) } }
            }
            nnz.pointee = Int64(r.count)
        }
    }
}

private func overrideKey(_ key: CInt) throws(QembedError) -> OverrideKey {
    guard let k = OverrideKey(rawValue: key) else { throw .invalid("key: unknown override key \(key)") }
    return k
}

@c @implementation
public func qembed_param_set_override(_ param: OpaquePointer!, _ key: CInt, _ value: Double) -> qembed_status {
    capi { () throws(QembedError) in try parameter(param).setOverride(try overrideKey(key), value) }
}

@c @implementation
public func qembed_param_get_override(_ param: OpaquePointer!, _ key: CInt, _ value: UnsafeMutablePointer<Double>!,
                                      _ is_set: UnsafeMutablePointer<Bool>!) -> qembed_status {
    capi { () throws(QembedError) in
        let p = try parameter(param), k = try overrideKey(key)
        let v = try need(value, "value"), s = try need(is_set, "is_set")
        let o = p.overrides[k]
        v.pointee = o ?? 0
        s.pointee = o != nil
    }
}

@c @implementation
public func qembed_param_clear_override(_ param: OpaquePointer!, _ key: CInt) -> qembed_status {
    capi { () throws(QembedError) in try parameter(param).clearOverride(try overrideKey(key)) }
}

@c @implementation
public func qembed_param_load(_ param: OpaquePointer!, _ src: UnsafeRawPointer!, _ dtype: CInt, _ numel: Int64) -> qembed_status {
    capi { () throws(QembedError) in
        let p = try parameter(param)
        let s = try need(src, "src")
        let d = try DType.float(dtype, argument: "dtype")
        try p.load(s, dtype: d, count: try count(numel, "numel"))
    }
}

// MARK: - Standalone parameters

/// name, dtype, ndim and shape of qembed_param_create/_wrap, checked.
private func standaloneSpec(_ name: UnsafePointer<CChar>?, _ dtype: CInt, _ ndim: CInt,
                            _ shape: UnsafePointer<Int64>?) throws(QembedError) -> (String, DType, [Int]) {
    let n = name.map { String(cString: $0) } ?? "param"
    guard !n.isEmpty else { throw .invalid("name is empty (pass NULL for \"param\")") }
    let d = try DType.float(dtype, argument: "dtype")
    guard ndim == 1 || ndim == 2 else { throw .invalid("ndim must be 1 or 2, got \(ndim)") }
    let s = try need(shape, "shape")
    var dims: [Int] = []
    for k in 0..<Int(ndim) {
        guard s[k] >= 1 && s[k] <= Int64(Int.max) else { throw .shape("shape[\(k)] = \(s[k]) (every dimension must be >= 1)") }
        dims.append(Int(s[k]))
    }
    return (n, d, dims)
}

@c @implementation
public func qembed_param_create(_ name: UnsafePointer<CChar>!, _ dtype: CInt, _ ndim: CInt, _ shape: UnsafePointer<Int64>!,
                                _ out: UnsafeMutablePointer<OpaquePointer?>!) -> qembed_status {
    capi { () throws(QembedError) in
        let o = try need(out, "out")
        o.pointee = nil
        let (n, d, dims) = try standaloneSpec(name, dtype, ndim, shape)
        o.pointee = owned(try Parameter.standalone(name: n, dtype: d, shape: dims))
    }
}

@c @implementation
public func qembed_param_wrap(_ name: UnsafePointer<CChar>!, _ dtype: CInt, _ ndim: CInt, _ shape: UnsafePointer<Int64>!,
                              _ data: UnsafeMutableRawPointer!, _ out: UnsafeMutablePointer<OpaquePointer?>!) -> qembed_status {
    capi { () throws(QembedError) in
        let o = try need(out, "out")
        o.pointee = nil
        let (n, d, dims) = try standaloneSpec(name, dtype, ndim, shape)
        o.pointee = owned(try Parameter.standalone(name: n, dtype: d, shape: dims, wrapping: try need(data, "data")))
    }
}

@c @implementation
public func qembed_param_free(_ param: OpaquePointer!) {
    guard let param else { return }
    let u = Unmanaged<Parameter>.fromOpaque(UnsafeRawPointer(param))
    // A layer's parameter is borrowed (freed with its layer): nothing to release.
    if u.takeUnretainedValue().standalone { u.release() }
}

@c @implementation
public func qembed_param_set_grad(_ param: OpaquePointer!, _ grad: UnsafeRawPointer!, _ dtype: CInt, _ numel: Int64) -> qembed_status {
    capi { () throws(QembedError) in
        let p = try parameter(param)
        let g = try need(grad, "grad")
        let d = try DType.float(dtype, argument: "dtype")
        try p.setGrad(copying: g, dtype: d, count: try count(numel, "numel"))
    }
}

@c @implementation
public func qembed_param_wrap_grad(_ param: OpaquePointer!, _ grad: UnsafeMutablePointer<Float>!, _ numel: Int64) -> qembed_status {
    capi { () throws(QembedError) in
        let p = try parameter(param)
        try p.wrapGrad(try need(grad, "grad"), count: try count(numel, "numel"))
    }
}

@c @implementation
public func qembed_param_clear_grad(_ param: OpaquePointer!) -> qembed_status {
    capi { () throws(QembedError) in try parameter(param).clearGrad() }
}
