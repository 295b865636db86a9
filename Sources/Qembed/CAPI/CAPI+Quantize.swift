import CQembed
import QembedCore

/// A caller-given code (or nil for the signed dynamic map), validated.
private func codePointer(_ code: UnsafePointer<Float>?, _ name: StaticString = "code") throws(QembedError) -> UnsafePointer<Float> {
    guard let code else {
        return QuantMap.signedDynamicPointer
    }
    try CodeSearch.validate(code, argument: "\(name)")
    return code
}

@c @implementation
public func qembed_blockwise_absmax_count(_ n: Int64, _ blocksize: Int64, _ count_: UnsafeMutablePointer<Int64>!) -> qembed_status {
    capi { () throws(QembedError) in
        let out = try need(count_, "count")
        let n = try count(n, "n", minimum: 0)
        let bs = try count(blocksize, "blocksize")
        out.pointee = Int64(ceilDiv(n, bs))
    }
}

@c @implementation
public func qembed_quantize_blockwise(_ A: UnsafeRawPointer!, _ dtype: CInt, _ n: Int64, _ code: UnsafePointer<Float>!,
                                      _ blocksize: Int64, _ out: UnsafeMutablePointer<UInt8>!,
                                      _ absmax: UnsafeMutablePointer<Float>!, _ absmax_len: Int64) -> qembed_status {
    capi { () throws(QembedError) in
        let a = try need(A, "A"), o = try need(out, "out"), am = try need(absmax, "absmax")
        let d = try DType.float(dtype, argument: "dtype")
        let n = try count(n, "n"), bs = try count(blocksize, "blocksize")
        _ = try bytes(n, d.size, "A")
        try capacity(absmax_len, ceilDiv(n, bs), "absmax")
        let c = try codePointer(code)
        let search = code == nil ? CodeSearch.signedDynamic : CodeSearch.forCode(c)
        try Blockwise8.quantize(a, dtype: d, n: n, search: search, blocksize: bs, out: o, absmax: am)
    }
}

@c @implementation
public func qembed_dequantize_blockwise(_ A: UnsafePointer<UInt8>!, _ n: Int64, _ absmax: UnsafePointer<Float>!,
                                        _ absmax_len: Int64, _ code: UnsafePointer<Float>!, _ blocksize: Int64,
                                        _ out_dtype: CInt, _ out: UnsafeMutableRawPointer!) -> qembed_status {
    capi { () throws(QembedError) in
        let a = try need(A, "A"), am = try need(absmax, "absmax"), o = try need(out, "out")
        let d = try DType.float(out_dtype, argument: "out_dtype")
        let n = try count(n, "n"), bs = try count(blocksize, "blocksize")
        _ = try bytes(n, d.size, "out")
        try capacity(absmax_len, ceilDiv(n, bs), "absmax")
        let c = try codePointer(code)
        try Blockwise8.dequantize(a, n: n, absmax: am, code: c, blocksize: bs, out: o, dtype: d)
    }
}

@c @implementation
public func qembed_quantize_statistics(_ absmax: UnsafePointer<Float>!, _ count_: Int64, _ nested_blocksize: Int64,
                                       _ qabsmax: UnsafeMutablePointer<UInt8>!, _ nested_absmax: UnsafeMutablePointer<Float>!,
                                       _ nested_absmax_len: Int64, _ offset: UnsafeMutablePointer<Float>!) -> qembed_status {
    capi { () throws(QembedError) in
        let a = try need(absmax, "absmax"), q = try need(qabsmax, "qabsmax")
        let na = try need(nested_absmax, "nested_absmax"), off = try need(offset, "offset")
        let n = try count(count_, "count"), bs = try count(nested_blocksize, "nested_blocksize")
        try capacity(nested_absmax_len, ceilDiv(n, bs), "nested_absmax")
        off.pointee = try Statistics.quantize(a, count: n, nestedBlocksize: bs, qabsmax: q, nestedAbsmax: na)
    }
}

@c @implementation
public func qembed_dequantize_statistics(_ qabsmax: UnsafePointer<UInt8>!, _ count_: Int64,
                                         _ nested_absmax: UnsafePointer<Float>!, _ nested_absmax_len: Int64,
                                         _ nested_code: UnsafePointer<Float>!, _ nested_blocksize: Int64, _ offset: Float,
                                         _ absmax: UnsafeMutablePointer<Float>!) -> qembed_status {
    capi { () throws(QembedError) in
        let q = try need(qabsmax, "qabsmax"), na = try need(nested_absmax, "nested_absmax")
        let out = try need(absmax, "absmax")
        let n = try count(count_, "count"), bs = try count(nested_blocksize, "nested_blocksize")
        try capacity(nested_absmax_len, ceilDiv(n, bs), "nested_absmax")
        guard offset.isFinite else { throw QembedError(.nonFinite, "offset is \(offset) (must be finite)") }
        let c = try codePointer(nested_code, "nested_code")
        Statistics.dequantize(q, count: n, nestedAbsmax: na, code: c, nestedBlocksize: bs, offset: offset, absmax: out)
    }
}

@c @implementation
public func qembed_4bit_packed_bytes(_ n: Int64, _ bytes_: UnsafeMutablePointer<Int64>!) -> qembed_status {
    capi { () throws(QembedError) in
        let out = try need(bytes_, "bytes")
        out.pointee = Int64(FourBit.packedBytes(try count(n, "n", minimum: 0)))
    }
}

private func fourBitBlocksize(_ v: Int64) throws(QembedError) -> Int {
    try FourBit.checkBlocksize(v)
    return Int(v)
}

@c @implementation
public func qembed_quantize_4bit(_ A: UnsafeRawPointer!, _ dtype: CInt, _ n: Int64, _ blocksize: Int64, _ quant_type: CInt,
                                 _ packed: UnsafeMutablePointer<UInt8>!, _ packed_len: Int64,
                                 _ absmax: UnsafeMutablePointer<Float>!, _ absmax_len: Int64) -> qembed_status {
    capi { () throws(QembedError) in
        let a = try need(A, "A"), p = try need(packed, "packed"), am = try need(absmax, "absmax")
        let d = try DType.float(dtype, argument: "dtype")
        let n = try count(n, "n")
        let bs = try fourBitBlocksize(blocksize)
        let t = try fourBitType(quant_type)
        _ = try bytes(n, d.size, "A")
        try capacity(packed_len, FourBit.packedBytes(n), "packed")
        try capacity(absmax_len, ceilDiv(n, bs), "absmax")
        try FourBit.quantize(a, dtype: d, n: n, blocksize: bs, type: t, packed: p, absmax: am)
    }
}

@c @implementation
public func qembed_dequantize_4bit(_ packed: UnsafePointer<UInt8>!, _ packed_len: Int64, _ n: Int64,
                                   _ absmax: UnsafePointer<Float>!, _ absmax_len: Int64, _ blocksize: Int64,
                                   _ quant_type: CInt, _ out_dtype: CInt, _ out: UnsafeMutableRawPointer!) -> qembed_status {
    capi { () throws(QembedError) in
        let p = try need(packed, "packed"), am = try need(absmax, "absmax"), o = try need(out, "out")
        let d = try DType.float(out_dtype, argument: "out_dtype")
        let n = try count(n, "n")
        let bs = try fourBitBlocksize(blocksize)
        let t = try fourBitType(quant_type)
        _ = try bytes(n, d.size, "out")
        try capacity(packed_len, FourBit.packedBytes(n), "packed")
        try capacity(absmax_len, ceilDiv(n, bs), "absmax")
        try FourBit.dequantize(p, n: n, absmax: am, blocksize: bs, type: t, out: o, dtype: d)
    }
}

@c @implementation
public func qembed_int8_vectorwise_quant(_ A: UnsafeRawPointer!, _ dtype: CInt, _ rows: Int64, _ cols: Int64,
                                         _ threshold: Float, _ out: UnsafeMutablePointer<Int8>!,
                                         _ row_stats: UnsafeMutablePointer<Float>!,
                                         _ outlier_cols: UnsafeMutablePointer<Int32>!,
                                         _ n_outlier_cols: UnsafeMutablePointer<Int64>!) -> qembed_status {
    capi { () throws(QembedError) in
        let a = try need(A, "A"), o = try need(out, "out"), rs = try need(row_stats, "row_stats")
        let d = try DType.float(dtype, argument: "dtype")
        let r = try count(rows, "rows"), c = try count(cols, "cols")
        guard c <= Int(Int32.max) else { throw .shape("cols = \(c) exceeds the int32 column index range") }
        let total = try checkedMul(r, c, "rows x cols")
        _ = try bytes(total, d.size, "A")
        guard threshold.isFinite && threshold >= 0 else {
            throw .invalid("threshold must be finite and >= 0, got \(threshold)")
        }
        if threshold > 0 {
            _ = try need(outlier_cols, "outlier_cols (required when threshold > 0)")
            _ = try need(n_outlier_cols, "n_outlier_cols (required when threshold > 0)")
        }
        let cols32 = try Int8Rowwise.quantize(a, dtype: d, rows: r, cols: c, threshold: threshold, out: o, rowStats: rs)
        if let oc = outlier_cols { for (i, v) in cols32.enumerated() { oc[i] = v } }
        if let nc = n_outlier_cols { nc.pointee = Int64(cols32.count) }
    }
}

@c @implementation
public func qembed_int8_vectorwise_dequant(_ A: UnsafePointer<Int8>!, _ rows: Int64, _ cols: Int64,
                                           _ row_stats: UnsafePointer<Float>!, _ out_dtype: CInt,
                                           _ out: UnsafeMutableRawPointer!) -> qembed_status {
    capi { () throws(QembedError) in
        let a = try need(A, "A"), rs = try need(row_stats, "row_stats"), o = try need(out, "out")
        let d = try DType.float(out_dtype, argument: "out_dtype")
        let r = try count(rows, "rows"), c = try count(cols, "cols")
        let total = try checkedMul(r, c, "rows x cols")
        _ = try bytes(total, d.size, "out")
        try Int8Rowwise.dequantize(a, rows: r, cols: c, rowStats: rs, out: o, dtype: d)
    }
}
