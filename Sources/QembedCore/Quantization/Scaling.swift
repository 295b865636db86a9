/// How a block's values are scaled into [-1, 1] before the code search:
/// s = clamp(x * (1 / absmax), -1, 1) in float32 (bitsandbytes' rule).
/// A zero block scales to zeros; when 1/absmax overflows (absmax < 2^-128,
/// a subnormal), x / absmax is used so that such blocks still quantize exactly.
public struct BlockScale {
    public let absmax: Float
    public let reciprocal: Float
    public let divides: Bool

    @inline(__always)
    public init(absmax: Float) {
        self.absmax = absmax
        if absmax == 0 {
            reciprocal = 0; divides = false
        } else {
            let r = 1 / absmax
            reciprocal = r
            divides = !r.isFinite
        }
    }

    @inline(__always)
    public func scaled(_ x: Float) -> Float {
        let v = divides ? x / absmax : x * reciprocal
        return Swift.min(Swift.max(v, -1), 1)
    }
}

/// clamp(v, -1, 1) lane-wise. (`pointwiseMin`/`pointwiseMax`/`clamped` compile
/// to out-of-line generic calls in Swift 6.3; masked `replacing` inlines to
/// compare + blend.)
@inline(__always)
public func clampUnit(_ v: SIMD8<Float>) -> SIMD8<Float> {
    var r = v.replacing(with: SIMD8(repeating: -1), where: v .< -1)
    r = r.replacing(with: SIMD8(repeating: 1), where: r .> 1)
    return r
}
