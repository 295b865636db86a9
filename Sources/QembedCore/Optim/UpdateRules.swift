import CQembedSIMD
#if canImport(Glibc)
import Glibc
#endif

/// Correctly rounded lane-wise square root (one vsqrtps for 8 lanes).
@inline(__always)
func vsqrt<V: SIMD>(_ x: V) -> V where V.Scalar == Float {
    if V.self == SIMD8<Float>.self { return unsafeBitCast(qembed__sqrt8(unsafeBitCast(x, to: SIMD8<Float>.self)), to: V.self) }
    var r = x
    for i in r.indices { r[i] = x[i].squareRoot() }
    return r
}

/// a * b + c with one rounding, lane-wise (vfmadd for 8 lanes).
@inline(__always)
func vfma<V: SIMD>(_ a: V, _ b: V, _ c: V) -> V where V.Scalar == Float {
    if V.self == SIMD8<Float>.self {
        return unsafeBitCast(qembed__fma8(unsafeBitCast(a, to: SIMD8<Float>.self), unsafeBitCast(b, to: SIMD8<Float>.self),
                                          unsafeBitCast(c, to: SIMD8<Float>.self)), to: V.self)
    }
    var r = c
    for i in r.indices { r[i] = c[i].addingProduct(a[i], b[i]) }
    return r
}

/// x / k.c2, correctly rounded, without a divide: q = x * (1/c2) is within
/// an ulp, the residual x - q * c2 is exact in an FMA, and one correction
/// step rounds to the quotient (Markstein's theorem). It holds while the
/// residual is not subnormal: for all x >= 2^-100 (checked exhaustively
/// over every normal float for the c2 of Adam's first steps and on a 1 in
/// 10^4 sample for ~600 others: no difference above 2^-103), which
/// covers every sqrt(v) (>= 2^-75 or 0). Rerun: tools/markstein_check.c.
@inline(__always)
func divideByC2<V: SIMD>(_ x: V, _ k: UpdateScalars) -> V where V.Scalar == Float {
    let q = x * k.invC2
    return vfma(vfma(-q, V(repeating: k.c2), x), V(repeating: k.invC2), q)
}

/// Scalars of one step. Upstream computes bias corrections and step sizes in
/// double (Python floats) and torch rounds each scalar once to float32 when it
/// meets a float tensor; the same happens here.
struct UpdateScalars {
    let kind: OptimizerKind
    let b1: Float, b2: Float, oneMinusB1: Float, oneMinusB2: Float
    let eps: Float, wd: Float, decay: Float   // decay = 1 - lr * wd
    let lr: Float, negLr: Float
    // Adam 32-bit: update = m / (sqrt(v) + epsC2); p += stepSize * update
    let epsC2: Float, stepSize32: Float
    // Adam 8-bit: denom = sqrt(v) / c2 + eps; p += (-lr / c1) * (m / denom)
    let c2: Float, invC2: Float, negLrOverC1: Float
    let firstStep: Bool

    init(_ c: OptimizerConfig, step: Int) {
        kind = c.kind
        b1 = Float(c.beta1); b2 = Float(c.beta2)
        oneMinusB1 = Float(1 - c.beta1); oneMinusB2 = Float(1 - c.beta2)
        eps = Float(c.eps); wd = Float(c.weightDecay); decay = Float(1 - c.lr * c.weightDecay)
        lr = Float(c.lr); negLr = Float(-c.lr)
        let correction1 = 1 - pow(c.beta1, Double(step))
        let correction2 = (1 - pow(c.beta2, Double(step))).squareRoot()
        epsC2 = Float(c.eps * correction2)
        stepSize32 = Float(-c.lr * correction2 / correction1)
        c2 = Float(correction2)
        invC2 = 1 / c2
        negLrOverC1 = Float(-c.lr / correction1)
        firstStep = step == 1
    }
}

/// One optimizer's element rule, as a type so loops specialize per optimizer,
/// written once for any float vector width V (SIMD8 for the body of a loop,
/// SIMD2 with one used lane for its tail), in upstream's operation order.
/// `update32` returns the update u (p then gets p + alpha32 * u; weight decay
/// that upstream applies to p first is applied in place); `update8` applies
/// upstream's 8-bit formula to p directly.
protocol UpdateRule {
    static func update32<V: SIMD>(_ k: UpdateScalars, _ g: V, _ p: inout V, _ s1: inout V, _ s2: inout V) -> V where V.Scalar == Float
    static func update8<V: SIMD>(_ k: UpdateScalars, _ g: V, _ p: inout V, _ s1: inout V, _ s2: inout V) where V.Scalar == Float
    static func alpha32(_ k: UpdateScalars) -> Float
    /// Two states (Adam's m and v), else one.
    static var twoStates: Bool { get }
    /// state1 accumulates squares that feed a square root in a denominator
    /// (RMSprop, Adagrad): 8-bit rounding floors it (see StateRounding).
    /// Adam's state2 always is such a state.
    static var squareState1: Bool { get }
}

extension UpdateRule {
    static var twoStates: Bool { false }
    static var squareState1: Bool { false }
}

enum AdamRule: UpdateRule {
    @inline(__always) static func update32<V: SIMD>(_ k: UpdateScalars, _ g: V, _ p: inout V, _ s1: inout V, _ s2: inout V) -> V where V.Scalar == Float {
        s1 = s1 * k.b1 + g * k.oneMinusB1
        s2 = s2 * k.b2 + k.oneMinusB2 * g * g
        if k.wd > 0 { p = p * k.decay }
        return s1 / (vsqrt(s2) + k.epsC2)
    }
    @inline(__always) static func update8<V: SIMD>(_ k: UpdateScalars, _ g: V, _ p: inout V, _ s1: inout V, _ s2: inout V) where V.Scalar == Float {
        s1 = s1 * k.b1 + g * k.oneMinusB1
        s2 = s2 * k.b2 + k.oneMinusB2 * g * g
        let denom = divideByC2(vsqrt(s2), k) + k.eps  // = sqrt(v) / c2 + eps
        if k.wd > 0 { p = p * k.decay }
        p = p + k.negLrOverC1 * (s1 / denom)
    }
    @inline(__always) static func alpha32(_ k: UpdateScalars) -> Float { k.stepSize32 }
    static var twoStates: Bool { true }
}

enum MomentumRule: UpdateRule {
    @inline(__always) static func update32<V: SIMD>(_ k: UpdateScalars, _ g: V, _ p: inout V, _ s1: inout V, _ s2: inout V) -> V where V.Scalar == Float {
        let gw = k.wd > 0 ? g + k.wd * p : g
        s1 = k.firstStep ? gw : s1 * k.b1 + gw
        return s1
    }
    @inline(__always) static func update8<V: SIMD>(_ k: UpdateScalars, _ g: V, _ p: inout V, _ s1: inout V, _ s2: inout V) where V.Scalar == Float {
        let gw = k.wd > 0 ? g + k.wd * p : g  // (0 * an infinite weight would be NaN)
        s1 = k.firstStep ? gw : s1 * k.b1 + gw
        p = p + k.negLr * s1
    }
    @inline(__always) static func alpha32(_ k: UpdateScalars) -> Float { k.negLr }
}

enum LionRule: UpdateRule {
    /// sign(x) lane-wise: 1, -1 or 0.
    @inline(__always) static func sign<V: SIMD>(_ x: V) -> V where V.Scalar == Float {
        // Concrete widths: the generic masked ops do not inline in Swift 6.3.
        if V.self == SIMD8<Float>.self {
            let v = unsafeBitCast(x, to: SIMD8<Float>.self)
            let r = SIMD8<Float>(repeating: 0).replacing(with: 1, where: v .> 0).replacing(with: -1, where: v .< 0)
            return unsafeBitCast(r, to: V.self)
        }
        var r = V(repeating: 0)
        for i in r.indices { r[i] = x[i] > 0 ? 1 : (x[i] < 0 ? -1 : 0) }
        return r
    }
    @inline(__always) static func update32<V: SIMD>(_ k: UpdateScalars, _ g: V, _ p: inout V, _ s1: inout V, _ s2: inout V) -> V where V.Scalar == Float {
        if k.wd > 0 { p = p * k.decay }
        let u = s1 * k.b1 + g * k.oneMinusB1
        s1 = s1 * k.b2 + g * k.oneMinusB2
        return sign(u)
    }
    @inline(__always) static func update8<V: SIMD>(_ k: UpdateScalars, _ g: V, _ p: inout V, _ s1: inout V, _ s2: inout V) where V.Scalar == Float {
        if k.wd > 0 { p = p * k.decay }
        let u = sign(s1 * k.b1 + g * k.oneMinusB1)
        p = p + k.negLr * u
        s1 = s1 * k.b2 + g * k.oneMinusB2
    }
    @inline(__always) static func alpha32(_ k: UpdateScalars) -> Float { k.negLr }
}

enum RMSpropRule: UpdateRule {
    @inline(__always) static func update32<V: SIMD>(_ k: UpdateScalars, _ g: V, _ p: inout V, _ s1: inout V, _ s2: inout V) -> V where V.Scalar == Float {
        let gw = k.wd > 0 ? g + k.wd * p : g
        s1 = s1 * k.b1 + k.oneMinusB1 * gw * gw
        return gw / (vsqrt(s1) + k.eps)
    }
    @inline(__always) static func update8<V: SIMD>(_ k: UpdateScalars, _ g: V, _ p: inout V, _ s1: inout V, _ s2: inout V) where V.Scalar == Float {
        let gw = k.wd > 0 ? g + k.wd * p : g  // (0 * an infinite weight would be NaN)
        s1 = s1 * k.b1 + k.oneMinusB1 * gw * gw
        p = p + k.negLr * (gw / (vsqrt(s1) + k.eps))
    }
    @inline(__always) static func alpha32(_ k: UpdateScalars) -> Float { k.negLr }
    static var squareState1: Bool { true }
}

enum AdagradRule: UpdateRule {
    @inline(__always) static func update32<V: SIMD>(_ k: UpdateScalars, _ g: V, _ p: inout V, _ s1: inout V, _ s2: inout V) -> V where V.Scalar == Float {
        let gw = k.wd > 0 ? g + k.wd * p : g
        s1 = s1 + gw * gw
        return gw / (vsqrt(s1) + k.eps)
    }
    @inline(__always) static func update8<V: SIMD>(_ k: UpdateScalars, _ g: V, _ p: inout V, _ s1: inout V, _ s2: inout V) where V.Scalar == Float {
        let gw = k.wd > 0 ? g + k.wd * p : g  // (0 * an infinite weight would be NaN)
        s1 = s1 + gw * gw
        p = p + k.negLr * (gw / (vsqrt(s1) + k.eps))
    }
    @inline(__always) static func alpha32(_ k: UpdateScalars) -> Float { k.negLr }
    static var squareState1: Bool { true }
}

/// Calls `body` with the rule type of `kind`.
@inline(__always)
func withRule<R>(_ kind: OptimizerKind, _ body: (any UpdateRule.Type) throws(QembedError) -> R) throws(QembedError) -> R {
    switch kind {
    case .adam, .adamw: try body(AdamRule.self)
    case .momentum: try body(MomentumRule.self)
    case .lion: try body(LionRule.self)
    case .rmsprop: try body(RMSpropRule.self)
    case .adagrad: try body(AdagradRule.self)
    }
}
