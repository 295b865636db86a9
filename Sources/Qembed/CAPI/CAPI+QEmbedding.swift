import CQembed
import QembedCore
import QembedIO

// The quantized embeddings' section of the header: Embedding8bit and
// Embedding4bit tables (quantize, shards, lookups, save and load).

func qembedding(_ p: OpaquePointer?) throws(QembedError) -> QuantizedEmbedding {
    guard let p else { throw QembedError(.nullPointer, "quantized embedding handle is NULL") }
    return Unmanaged<QuantizedEmbedding>.fromOpaque(UnsafeRawPointer(p)).takeUnretainedValue()
}

private func qkind(_ raw: CInt) throws(QembedError) -> QuantizedEmbedding.Kind {
    guard let k = QuantizedEmbedding.Kind(rawValue: raw) else { throw .unsupported("kind: unknown quantized embedding kind \(raw)") }
    return k
}

private func retained(_ q: QuantizedEmbedding) -> OpaquePointer { OpaquePointer(Unmanaged.passRetained(q).toOpaque()) }

/// The arguments qembed_qembedding_quantize and _quantize_shard share,
/// checked in the header's order.
private struct QuantizeArgs {
    let out: UnsafeMutablePointer<OpaquePointer?>, weight: UnsafeRawPointer, dtype: DType
    let rows: Int, dim: Int, kind: QuantizedEmbedding.Kind, blocksize: Int, compress: Bool

    init(_ weight: UnsafeRawPointer?, _ dtype: CInt, _ rows: Int64, _ dim: Int64, _ kind: CInt, _ blocksize: Int64,
         _ compress_statistics: Bool, _ out: UnsafeMutablePointer<OpaquePointer?>?) throws(QembedError) {
        self.out = try need(out, "out")
        self.weight = try need(weight, "weight")
        self.dtype = try DType.float(dtype, argument: "dtype")
        self.rows = try count(rows, "rows")
        self.dim = try count(dim, "dim")
        self.kind = try qkind(kind)
        _ = try bytes(try checkedMul(self.rows, self.dim, "rows x dim"), self.dtype.size, "weight")
        self.blocksize = self.kind == .int8 ? 64 : Int(clamping: blocksize)
        compress = self.kind != .int8 && compress_statistics
    }

    func quantize(shard: RowShard? = nil) throws(QembedError) {
        out.pointee = retained(try QuantizedEmbedding.quantize(weight, dtype: dtype, rows: rows, dim: dim, kind: kind,
                                                               blocksize: blocksize, compressStatistics: compress, shard: shard))
    }
}

@c @implementation
public func qembed_qembedding_quantize(_ weight: UnsafeRawPointer!, _ dtype: CInt, _ rows: Int64, _ dim: Int64, _ kind: CInt,
                                       _ blocksize: Int64, _ compress_statistics: Bool, _ out: UnsafeMutablePointer<OpaquePointer?>!) -> qembed_status {
    out?.pointee = nil
    return capi { () throws(QembedError) in
        try QuantizeArgs(weight, dtype, rows, dim, kind, blocksize, compress_statistics, out).quantize()
    }
}

@c @implementation
public func qembed_qembedding_quantize_shard(_ weight: UnsafeRawPointer!, _ dtype: CInt, _ rows: Int64, _ dim: Int64, _ kind: CInt,
                                             _ blocksize: Int64, _ compress_statistics: Bool, _ row_offset: Int64,
                                             _ total_rows: Int64, _ out: UnsafeMutablePointer<OpaquePointer?>!) -> qembed_status {
    out?.pointee = nil
    return capi { () throws(QembedError) in
        let a = try QuantizeArgs(weight, dtype, rows, dim, kind, blocksize, compress_statistics, out)
        guard total_rows >= 1 else { throw .invalid("total_rows must be >= 1, got \(total_rows)") }
        guard total_rows <= Int64(Int.max / 16) else { throw .shape("total_rows = \(total_rows) is too large") }
        try a.quantize(shard: try RowShard(rowOffset: Int(clamping: row_offset), totalRows: Int(total_rows), rows: a.rows))
    }
}

@c @implementation
public func qembed_qembedding_get_shard(_ q: OpaquePointer!, _ row_offset: UnsafeMutablePointer<Int64>!,
                                        _ total_rows: UnsafeMutablePointer<Int64>!) -> qembed_status {
    capi { () throws(QembedError) in
        let l = try qembedding(q)
        let o = try need(row_offset, "row_offset"), t = try need(total_rows, "total_rows")
        o.pointee = Int64(l.shard?.rowOffset ?? 0)
        t.pointee = Int64(l.shard?.totalRows ?? l.numEmbeddings)
    }
}

@c @implementation
public func qembed_qembedding_from_embedding(_ e: OpaquePointer!, _ kind: CInt, _ blocksize: Int64, _ compress_statistics: Bool,
                                             _ out: UnsafeMutablePointer<OpaquePointer?>!) -> qembed_status {
    out?.pointee = nil
    return capi { () throws(QembedError) in
        let o = try need(out, "out")
        let layer = try embedding(e)
        let k = try qkind(kind)
        o.pointee = retained(try QuantizedEmbedding.from(layer, kind: k, blocksize: k == .int8 ? 64 : Int(clamping: blocksize),
                                                         compressStatistics: k != .int8 && compress_statistics))
    }
}

@c @implementation
public func qembed_qembedding_free(_ q: OpaquePointer!) {
    guard let q else { return }
    Unmanaged<QuantizedEmbedding>.fromOpaque(UnsafeRawPointer(q)).release()
}

@c @implementation
public func qembed_qembedding_info_get(_ q: OpaquePointer!, _ info: UnsafeMutablePointer<qembed_qembedding_info>!) -> qembed_status {
    capi { () throws(QembedError) in
        let l = try qembedding(q)
        let out = try need(info, "info")
        try checkStructSize(out.pointee.struct_size, MemoryLayout<qembed_qembedding_info>.size, "info")
        var d = qembed_qembedding_info()
        d.struct_size = out.pointee.struct_size
        d.kind = l.kind.rawValue
        d.num_embeddings = Int64(l.numEmbeddings)
        d.embedding_dim = Int64(l.embeddingDim)
        d.dtype = l.dtype.rawValue
        d.blocksize = Int64(l.blocksize)
        d.nested = l.nested
        d.table_bytes = Int64(l.tableBytes)
        out.pointee = d
    }
}

@c @implementation
public func qembed_qembedding_forward(_ q: OpaquePointer!, _ indices: UnsafeRawPointer!, _ index_dtype: CInt, _ count_: Int64,
                                      _ out: UnsafeMutableRawPointer!, _ out_dtype: CInt, _ out_len: Int64) -> qembed_status {
    capi { () throws(QembedError) in
        let l = try qembedding(q)
        let c = try count(count_, "count", minimum: 0)
        let id = try DType.from(index_dtype, argument: "index_dtype")
        let od = try DType.float(out_dtype, argument: "out_dtype")
        let needed = try checkedMul(c, l.embeddingDim, "count x embedding_dim")
        _ = try bytes(needed, od.size, "out")
        try capacity(out_len, needed, "out")
        if c == 0 { _ = try Indices(UnsafeRawPointer(bitPattern: 8)!, dtype: id, count: 0); return }
        let idx = try Indices(try need(indices, "indices"), dtype: id, count: c)
        try l.forward(idx, out: try need(out, "out"), outDtype: od)
    }
}

@c @implementation
public func qembed_qembedding_save(_ q: OpaquePointer!, _ path: UnsafePointer<CChar>!, _ prefix: UnsafePointer<CChar>!) -> qembed_status {
    capi { () throws(QembedError) in
        let l = try qembedding(q)
        try l.save(try cString(path, "path"), prefix: prefix.map { String(cString: $0) } ?? "weight")
    }
}

@c @implementation
public func qembed_qembedding_load(_ path: UnsafePointer<CChar>!, _ prefix: UnsafePointer<CChar>!, _ out: UnsafeMutablePointer<OpaquePointer?>!) -> qembed_status {
    qembed_qembedding_load_ex(path, prefix, 0, out)
}

@c @implementation
public func qembed_qembedding_load_ex(_ path: UnsafePointer<CChar>!, _ prefix: UnsafePointer<CChar>!, _ flags: UInt32,
                                      _ out: UnsafeMutablePointer<OpaquePointer?>!) -> qembed_status {
    out?.pointee = nil
    return capi { () throws(QembedError) in
        let o = try need(out, "out")
        let mapped = try mappedFlag(flags)
        let l = try QuantizedEmbedding.load(try cString(path, "path"), prefix: prefix.map { String(cString: $0) }, mapped: mapped)
        o.pointee = retained(l)
    }
}
