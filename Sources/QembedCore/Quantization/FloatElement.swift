import CQembedSIMD

/// Element formats the kernels read and write, as zero-size types so that
/// generic kernels specialize per format (no per-element switch).
public protocol FloatElement {
    /// The storage type of one element.
    associatedtype Storage
    /// |x| as an integer whose order equals the order of |x| (sign bit
    /// cleared); non-finite values compare >= `nonFiniteBits`.
    static func magnitudeBits(_ p: UnsafePointer<Storage>, _ i: Int) -> UInt32
    static var nonFiniteBits: UInt32 { get }
    static func float(fromMagnitudeBits b: UInt32) -> Float
    static func load(_ p: UnsafePointer<Storage>, _ i: Int) -> Float
    static func store(_ v: Float, _ p: UnsafeMutablePointer<Storage>, _ i: Int)
    /// Elements i..<i+8 as float32.
    static func load8(_ p: UnsafePointer<Storage>, _ i: Int) -> SIMD8<Float>
    /// Stores 8 floats as elements i..<i+8 (round to nearest even).
    static func store8(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Storage>, _ i: Int)
}

public enum F32: FloatElement {
    public typealias Storage = Float
    @inline(__always) public static func magnitudeBits(_ p: UnsafePointer<Float>, _ i: Int) -> UInt32 { p[i].bitPattern & 0x7FFF_FFFF }
    public static var nonFiniteBits: UInt32 { 0x7F80_0000 }
    @inline(__always) public static func float(fromMagnitudeBits b: UInt32) -> Float { Float(bitPattern: b) }
    @inline(__always) public static func load(_ p: UnsafePointer<Float>, _ i: Int) -> Float { p[i] }
    @inline(__always) public static func store(_ v: Float, _ p: UnsafeMutablePointer<Float>, _ i: Int) { p[i] = v }
    @inline(__always) public static func load8(_ p: UnsafePointer<Float>, _ i: Int) -> SIMD8<Float> {
        UnsafeRawPointer(p + i).loadUnaligned(as: SIMD8<Float>.self)
    }
    @inline(__always) public static func store8(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>, _ i: Int) {
        UnsafeMutableRawPointer(p + i).storeBytes(of: v, as: SIMD8<Float>.self)
    }
}

public enum F16: FloatElement {
    public typealias Storage = UInt16
    @inline(__always) public static func magnitudeBits(_ p: UnsafePointer<UInt16>, _ i: Int) -> UInt32 { UInt32(p[i] & 0x7FFF) }
    public static var nonFiniteBits: UInt32 { 0x7C00 }
    @inline(__always) public static func float(fromMagnitudeBits b: UInt32) -> Float { Float(Float16(bitPattern: UInt16(truncatingIfNeeded: b))) }
    @inline(__always) public static func load(_ p: UnsafePointer<UInt16>, _ i: Int) -> Float { Float(Float16(bitPattern: p[i])) }
    @inline(__always) public static func store(_ v: Float, _ p: UnsafeMutablePointer<UInt16>, _ i: Int) { p[i] = Float16(v).bitPattern }
    @inline(__always) public static func load8(_ p: UnsafePointer<UInt16>, _ i: Int) -> SIMD8<Float> {
        SIMD8<Float>(UnsafeRawPointer(p + i).loadUnaligned(as: SIMD8<Float16>.self))
    }
    @inline(__always) public static func store8(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<UInt16>, _ i: Int) {
        UnsafeMutableRawPointer(p + i).storeBytes(of: SIMD8<Float16>(v), as: SIMD8<Float16>.self)
    }
}

public enum BF16: FloatElement {
    public typealias Storage = UInt16
    @inline(__always) public static func magnitudeBits(_ p: UnsafePointer<UInt16>, _ i: Int) -> UInt32 { UInt32(p[i] & 0x7FFF) }
    public static var nonFiniteBits: UInt32 { 0x7F80 }
    @inline(__always) public static func float(fromMagnitudeBits b: UInt32) -> Float { bf16ToFloat(UInt16(truncatingIfNeeded: b)) }
    @inline(__always) public static func load(_ p: UnsafePointer<UInt16>, _ i: Int) -> Float { bf16ToFloat(p[i]) }
    @inline(__always) public static func store(_ v: Float, _ p: UnsafeMutablePointer<UInt16>, _ i: Int) { p[i] = floatToBF16(v) }
    @inline(__always) public static func load8(_ p: UnsafePointer<UInt16>, _ i: Int) -> SIMD8<Float> {
        qembed__bf16_load8(p + i)
    }
    @inline(__always) public static func store8(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<UInt16>, _ i: Int) {
        for k in 0..<8 { p[i + k] = floatToBF16(v[k]) }
    }
}

/// Calls `body` with the element type matching `dtype` (f32, f16 or bf16).
public func withFloatElement<R>(_ dtype: DType, _ body: (any FloatElement.Type) throws(QembedError) -> R) throws(QembedError) -> R {
    switch dtype {
    case .f32: return try body(F32.self)
    case .f16: return try body(F16.self)
    case .bf16: return try body(BF16.self)
    default: throw .unsupported("dtype \(dtype.name) is not a float type (use f32, f16 or bf16)")
    }
}

/// Feeds `count` elements of `src` to a float32-only kernel: `body(floats,
/// offset, n)` sees elements offset ..< offset + n. float32 input goes
/// through in one call; float16 and bfloat16 are widened `chunk` (a
/// multiple of 8) at a time into a stack buffer, exactly as E.load does, so
/// the kernel's results equal the generic path's.
@inline(__always)
func withFloat32Chunks<E: FloatElement>(_ e: E.Type, _ src: UnsafePointer<E.Storage>, _ count: Int, chunk: Int,
                                        _ body: (UnsafePointer<Float>, Int, Int) -> Void) {
    if E.self == F32.self {
        body(UnsafeRawPointer(src).assumingMemoryBound(to: Float.self), 0, count)
        return
    }
    withUnsafeTemporaryAllocation(of: Float.self, capacity: chunk) { buf in
        let b = buf.baseAddress!
        var i = 0
        while i < count {
            let n = Swift.min(chunk, count - i)
            var l = 0
            while l + 8 <= n { F32.store8(E.load8(src, i + l), b, l); l += 8 }
            while l < n { b[l] = E.load(src, i + l); l += 1 }
            body(b, i, n)
            i += n
        }
    }
}

/// Runs `body` on float32 values of count parameter elements: in place for
/// float32; for float16/bfloat16 on a widened copy in `scratch` (>= count
/// floats), stored back rounded to nearest even afterwards. A value `body`
/// leaves alone comes back unchanged (the widening is exact).
@inline(__always)
func withFloat32Parameters<E: FloatElement>(_ e: E.Type, _ p: UnsafeMutablePointer<E.Storage>, _ count: Int,
                                            scratch: UnsafeMutablePointer<Float>,
                                            _ body: (UnsafeMutablePointer<Float>) -> Void) {
    if E.self == F32.self {
        body(UnsafeMutableRawPointer(p).assumingMemoryBound(to: Float.self))
        return
    }
    var l = 0
    while l + 8 <= count { F32.store8(E.load8(p, l), scratch, l); l += 8 }
    while l < count { scratch[l] = E.load(p, l); l += 1 }
    body(scratch)
    l = 0
    while l + 8 <= count { E.store8(F32.load8(scratch, l), p, l); l += 8 }
    while l < count { E.store(scratch[l], p, l); l += 1 }
}
