import CQembed
#if canImport(Glibc)
import Glibc
#endif
import QembedCore

@c @implementation
public func qembed_version_number() -> CUnsignedInt {
    CUnsignedInt(QEMBED_VERSION_MAJOR * 10000 + QEMBED_VERSION_MINOR * 100 + QEMBED_VERSION_PATCH)
}

/// "MAJOR.MINOR.PATCH" from the header's macros, made once and kept for the
/// life of the process.
private let versionString: UnsafePointer<CChar> = {
    let s = "\(QEMBED_VERSION_MAJOR).\(QEMBED_VERSION_MINOR).\(QEMBED_VERSION_PATCH)"
    return UnsafePointer(strdup(s)!)
}()

@c @implementation
public func qembed_version() -> UnsafePointer<CChar>! {
    versionString
}

/// The tier this build was compiled for (the dispatching libqembed.so of the
/// x86-64 build answers itself and never forwards this call).
@c @implementation
public func qembed_cpu_tier() -> UnsafePointer<CChar>! {
    #if QEMBED_TIER_BASELINE
    staticCString("baseline")
    #elseif QEMBED_TIER_AVX2
    staticCString("avx2")
    #elseif QEMBED_TIER_AVX512
    staticCString("avx512")
    #else
    staticCString("native")
    #endif
}

@c @implementation
public func qembed_status_string(_ status: CInt) -> UnsafePointer<CChar>! {
    switch status {
    case 0: staticCString("ok")
    case 1: staticCString("invalid argument")
    case 2: staticCString("null pointer")
    case 3: staticCString("out of range")
    case 4: staticCString("unsupported")
    case 5: staticCString("non-finite input")
    case 6: staticCString("shape mismatch or size overflow")
    case 7: staticCString("buffer too small")
    case 8: staticCString("out of memory")
    case 9: staticCString("I/O error")
    case 10: staticCString("malformed data")
    case 11: staticCString("internal error")
    default: staticCString("unknown status")
    }
}

@c @implementation
public func qembed_dtype_size(_ dtype: CInt) -> Int {
    DType(rawValue: dtype)?.size ?? 0
}

@c @implementation
public func qembed_dtype_name(_ dtype: CInt) -> UnsafePointer<CChar>! {
    switch DType(rawValue: dtype) {
    case .f32: staticCString("f32")
    case .f16: staticCString("f16")
    case .bf16: staticCString("bf16")
    case .u8: staticCString("u8")
    case .i8: staticCString("i8")
    case .i32: staticCString("i32")
    case .i64: staticCString("i64")
    case nil: staticCString("unknown")
    }
}

@c @implementation
public func qembed_get_num_threads() -> CInt {
    CInt(Parallel.threadCount)
}

@c @implementation
public func qembed_set_num_threads(_ n: CInt) -> qembed_status {
    capi { () throws(QembedError) in try Parallel.setThreadCount(Int(n)) }
}
