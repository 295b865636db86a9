import CQembed
import QembedCore
import QembedIO

/// A qembed_tensor_file: the file and the C strings the API hands out
/// for it (names, dtype names, metadata values), valid while the handle lives.
final class CTensorFile {
    let file: TensorFile
    private let names: [UnsafeMutablePointer<CChar>]
    private let values: [UnsafeMutablePointer<CChar>]

    init(_ f: TensorFile) {
        file = f
        names = f.entries.flatMap { [cStringCopy($0.name), cStringCopy($0.dtypeName)] }
        values = f.metadata.map { cStringCopy($0.1) }
    }

    deinit { for p in names + values { p.deallocate() } }

    func name(_ i: Int) -> UnsafePointer<CChar> { UnsafePointer(names[2 * i]) }
    func dtypeName(_ i: Int) -> UnsafePointer<CChar> { UnsafePointer(names[2 * i + 1]) }
    func metadata(_ key: String) -> UnsafePointer<CChar>? { file.metadataPosition(key).map { UnsafePointer(values[$0]) } }
}

/// A NUL-terminated copy of `s` (the caller frees it).
func cStringCopy(_ s: String) -> UnsafeMutablePointer<CChar> {
    let u = Array(s.utf8CString)
    let p = UnsafeMutablePointer<CChar>.allocate(capacity: u.count)
    p.initialize(from: u, count: u.count)
    return p
}

func tensorFileHandle(_ p: OpaquePointer?) throws(QembedError) -> CTensorFile {
    guard let p else { throw QembedError(.nullPointer, "file handle is NULL") }
    return Unmanaged<CTensorFile>.fromOpaque(UnsafeRawPointer(p)).takeUnretainedValue()
}

func tensorFile(_ p: OpaquePointer?) throws(QembedError) -> TensorFile { try tensorFileHandle(p).file }

func cString(_ p: UnsafePointer<CChar>?, _ name: StaticString) throws(QembedError) -> String {
    guard let p else { throw QembedError(.nullPointer, "\(name) is NULL") }
    return String(cString: p)
}

/// QEMBED_OPEN_* flags: whether to map the file.
func mappedFlag(_ flags: UInt32) throws(QembedError) -> Bool {
    guard flags & ~UInt32(QEMBED_OPEN_MMAP) == 0 else {
        throw QembedError(.invalidArgument, "flags: unknown bits \(String(flags & ~UInt32(QEMBED_OPEN_MMAP), radix: 16)) (known: QEMBED_OPEN_MMAP)")
    }
    return flags & UInt32(QEMBED_OPEN_MMAP) != 0
}

@c @implementation
public func qembed_tensor_file_open(_ path: UnsafePointer<CChar>!, _ out: UnsafeMutablePointer<OpaquePointer?>!) -> qembed_status {
    qembed_tensor_file_open_ex(path, 0, out)
}

@c @implementation
public func qembed_tensor_file_open_ex(_ path: UnsafePointer<CChar>!, _ flags: UInt32, _ out: UnsafeMutablePointer<OpaquePointer?>!) -> qembed_status {
    out?.pointee = nil
    return capi { () throws(QembedError) in
        let o = try need(out, "out")
        let mapped = try mappedFlag(flags)
        let f = try TensorFile(path: try cString(path, "path"), mapped: mapped)
        o.pointee = OpaquePointer(Unmanaged.passRetained(CTensorFile(f)).toOpaque())
    }
}

@c @implementation
public func qembed_tensor_file_close(_ f: OpaquePointer!) {
    guard let f else { return }
    Unmanaged<CTensorFile>.fromOpaque(UnsafeRawPointer(f)).release()
}

@c @implementation
public func qembed_tensor_file_count(_ f: OpaquePointer!, _ n: UnsafeMutablePointer<Int64>!) -> qembed_status {
    capi { () throws(QembedError) in
        let file = try tensorFile(f)
        try need(n, "n").pointee = Int64(file.entries.count)
    }
}

@c @implementation
public func qembed_tensor_file_info(_ f: OpaquePointer!, _ i: Int64, _ info: UnsafeMutablePointer<qembed_tensor_info>!) -> qembed_status {
    capi { () throws(QembedError) in
        let handle = try tensorFileHandle(f)
        let file = handle.file
        let out = try need(info, "info")
        try checkStructSize(out.pointee.struct_size, MemoryLayout<qembed_tensor_info>.size, "info")
        guard i >= 0 && i < Int64(file.entries.count) else {
            throw QembedError(.outOfRange, "i = \(i) is out of range: the file holds \(file.entries.count) tensors")
        }
        let e = file.entries[Int(i)]
        guard e.shape.count <= Int(QEMBED_MAX_DIMS) else { throw .unsupported("tensor \"\(e.name)\" has \(e.shape.count) dimensions (at most 8)") }
        var d = qembed_tensor_info()
        d.struct_size = out.pointee.struct_size
        d.name = handle.name(Int(i))
        d.dtype_name = handle.dtypeName(Int(i))
        d.dtype = e.dtype?.rawValue ?? -1
        d.ndim = CInt(e.shape.count)
        withUnsafeMutableBytes(of: &d.shape) { b in
            let s = b.baseAddress!.assumingMemoryBound(to: Int64.self)
            for (k, v) in e.shape.enumerated() { s[k] = Int64(v) }
        }
        d.numel = Int64(e.numel)
        d.nbytes = Int64(e.nbytes)
        d.data = file.data(Int(i))
        out.pointee = d
    }
}

@c @implementation
public func qembed_tensor_file_find(_ f: OpaquePointer!, _ name: UnsafePointer<CChar>!, _ index: UnsafeMutablePointer<Int64>!) -> qembed_status {
    capi { () throws(QembedError) in
        let file = try tensorFile(f)
        let n = try cString(name, "name")
        let o = try need(index, "index")
        guard let i = file.index(of: n) else {
            throw .invalid("tensor \"\(n)\" is not in \(file.file.path)")
        }
        o.pointee = Int64(i)
    }
}

@c @implementation
public func qembed_tensor_file_metadata(_ f: OpaquePointer!, _ key: UnsafePointer<CChar>!, _ value: UnsafeMutablePointer<UnsafePointer<CChar>?>!) -> qembed_status {
    capi { () throws(QembedError) in
        let handle = try tensorFileHandle(f)
        let k = try cString(key, "key")
        let o = try need(value, "value")
        o.pointee = handle.metadata(k)
    }
}

private func describe(_ t: qembed_tensor_desc, _ i: Int) throws(QembedError) -> TensorSource {
    let name = try cString(t.name, "tensors[i].name")
    let d = try DType.from(t.dtype, argument: "tensors[\(i)].dtype")
    guard t.ndim >= 0 && t.ndim <= QEMBED_MAX_DIMS else { throw .invalid("tensors[\(i)].ndim = \(t.ndim) is outside 0...8") }
    var shape: [Int] = []
    var shapeTuple = t.shape
    let dims = withUnsafeBytes(of: &shapeTuple) { Array($0.bindMemory(to: Int64.self).prefix(Int(t.ndim))) }
    var numel = 1
    for v in dims {
        guard v >= 0 else { throw .invalid("tensors[\(i)].shape has a negative entry \(v)") }
        numel = try checkedMul(numel, Int(v), "tensors[\(i)].shape")
        shape.append(Int(v))
    }
    let nbytes = try checkedMul(numel, d.size, "tensors[\(i)] bytes")
    let data: UnsafeRawPointer
    if nbytes == 0 { data = t.data ?? UnsafeRawPointer(bitPattern: 8)! } else {
        guard let p = t.data else { throw QembedError(.nullPointer, "tensors[\(i)].data is NULL") }
        data = p
    }
    return TensorSource(name: name, dtypeName: TensorFile.safetensorsName(d), shape: shape, data: data, nbytes: nbytes)
}

@c @implementation
public func qembed_save_safetensors(_ path: UnsafePointer<CChar>!, _ tensors: UnsafePointer<qembed_tensor_desc>!, _ n: Int64,
                                    _ meta_keys: UnsafePointer<UnsafePointer<CChar>?>!, _ meta_values: UnsafePointer<UnsafePointer<CChar>?>!,
                                    _ n_meta: Int64) -> qembed_status {
    capi { () throws(QembedError) in
        let p = try cString(path, "path")
        let count_ = try count(n, "n", minimum: 0)
        let m = try count(n_meta, "n_meta", minimum: 0)
        var ts: [TensorSource] = []
        if count_ > 0 {
            let list = try need(tensors, "tensors")
            for i in 0..<count_ { ts.append(try describe(list[i], i)) }
        }
        var meta: [(String, String)] = []
        if m > 0 {
            let ks = try need(meta_keys, "meta_keys"), vs = try need(meta_values, "meta_values")
            for i in 0..<m { meta.append((try cString(ks[i], "meta_keys[i]"), try cString(vs[i], "meta_values[i]"))) }
        }
        try SafeTensors.write(p, ts, metadata: meta)
    }
}

@c @implementation
public func qembed_save_npy(_ path: UnsafePointer<CChar>!, _ tensor: UnsafePointer<qembed_tensor_desc>!) -> qembed_status {
    capi { () throws(QembedError) in
        let p = try cString(path, "path")
        let t = try need(tensor, "tensor").pointee
        let s = try describe(t, 0)
        try Npy.write(p, dtype: try DType.from(t.dtype, argument: "tensor.dtype"), shape: s.shape, data: s.pieces[0].data)
    }
}

@c @implementation
public func qembed_embedding_save(_ e: OpaquePointer!, _ path: UnsafePointer<CChar>!) -> qembed_status {
    capi { () throws(QembedError) in try embedding(e).save(try cString(path, "path")) }
}
