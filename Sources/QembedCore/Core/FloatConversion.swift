/// Conversions between float32 and the 16-bit float formats.
/// bfloat16 is stored as its UInt16 bit pattern; float16 uses Swift's Float16.

/// bfloat16 bits -> Float (exact).
@inline(__always)
public func bf16ToFloat(_ b: UInt16) -> Float { Float(bitPattern: UInt32(b) << 16) }

/// Float -> bfloat16 bits, round to nearest even; NaN stays a quiet NaN.
@inline(__always)
public func floatToBF16(_ f: Float) -> UInt16 {
    let u = f.bitPattern
    if f.isNaN { return UInt16(truncatingIfNeeded: (u >> 16) | 0x0040) }
    let rounding: UInt32 = 0x7FFF &+ ((u >> 16) & 1)
    return UInt16(truncatingIfNeeded: (u &+ rounding) >> 16)
}

/// Reads element `i` of a float buffer of dtype f32/f16/bf16 as Float.
@inline(__always)
public func loadFloat(_ p: UnsafeRawPointer, _ dtype: DType, _ i: Int) -> Float {
    switch dtype {
    case .f16: return Float(p.assumingMemoryBound(to: Float16.self)[i])
    case .bf16: return bf16ToFloat(p.assumingMemoryBound(to: UInt16.self)[i])
    default: return p.assumingMemoryBound(to: Float.self)[i]
    }
}

/// Writes `v` as element `i` of a float buffer of dtype f32/f16/bf16.
@inline(__always)
public func storeFloat(_ v: Float, _ p: UnsafeMutableRawPointer, _ dtype: DType, _ i: Int) {
    switch dtype {
    case .f16: p.assumingMemoryBound(to: Float16.self)[i] = Float16(v)
    case .bf16: p.assumingMemoryBound(to: UInt16.self)[i] = floatToBF16(v)
    default: p.assumingMemoryBound(to: Float.self)[i] = v
    }
}

/// Converts `count` floats from `src` (f32) into `dst` of `dtype`.
public func storeFloats(_ src: UnsafePointer<Float>, _ count: Int, _ dst: UnsafeMutableRawPointer, _ dtype: DType) {
    switch dtype {
    case .f16:
        let d = dst.assumingMemoryBound(to: Float16.self)
        for i in 0..<count { d[i] = Float16(src[i]) }
    case .bf16:
        let d = dst.assumingMemoryBound(to: UInt16.self)
        for i in 0..<count { d[i] = floatToBF16(src[i]) }
    default:
        dst.assumingMemoryBound(to: Float.self).update(from: src, count: count)
    }
}

/// Converts `count` elements of `dtype` at `src` into float32 at `dst`.
public func loadFloats(_ src: UnsafeRawPointer, _ dtype: DType, _ count: Int, _ dst: UnsafeMutablePointer<Float>) {
    switch dtype {
    case .f16:
        let s = src.assumingMemoryBound(to: Float16.self)
        for i in 0..<count { dst[i] = Float(s[i]) }
    case .bf16:
        let s = src.assumingMemoryBound(to: UInt16.self)
        for i in 0..<count { dst[i] = bf16ToFloat(s[i]) }
    default:
        dst.update(from: src.assumingMemoryBound(to: Float.self), count: count)
    }
}
