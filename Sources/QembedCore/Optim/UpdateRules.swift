#if canImport(Glibc)
import Glibc
#endif

/// The per-element update rules of bitsandbytes' CPU optimizers, in float32
/// with the same operation order (so 32-bit results agree to rounding).
/// Scalars that upstream computes in double (bias corrections, step sizes)
/// are computed in double here and rounded once, as torch does for scalars.
struct UpdateScalars {
    let kind: OptimizerKind
    let b1: Float, b2: Float, oneMinusB1: Float, oneMinusB2: Float
    let eps: Float, wd: Float, decay: Float   // decay = 1 - lr * wd
    let lr: Float
    // Adam 32-bit: update = m / (sqrt(v) + epsC2); p += update * stepSize
    let epsC2: Float, stepSize32: Double
    // Adam 8-bit: denom = sqrt(v) / c2 + eps; p += m / denom * (-lr / c1)
    let c2: Float, negLrOverC1: Float
    let step: Int

    init(_ c: OptimizerConfig, step: Int) {
        kind = c.kind
        b1 = Float(c.beta1); b2 = Float(c.beta2)
        oneMinusB1 = Float(1 - c.beta1); oneMinusB2 = Float(1 - c.beta2)
        eps = Float(c.eps); wd = Float(c.weightDecay); decay = Float(1 - c.lr * c.weightDecay)
        lr = Float(c.lr)
        let correction1 = 1 - pow(c.beta1, Double(step))
        let correction2 = (1 - pow(c.beta2, Double(step))).squareRoot()
        epsC2 = Float(c.eps * correction2)
        stepSize32 = -c.lr * correction2 / correction1
        c2 = Float(correction2)
        negLrOverC1 = Float(-c.lr / correction1)
        self.step = step
    }
}

enum UpdateRules {
    /// One element, 32-bit state. Returns the update to add to p (before the
    /// update scale) after applying weight decay to p in place where upstream
    /// does. s1/s2 are updated in place.
    @inline(__always)
    static func update32(_ k: UpdateScalars, g: Float, p: inout Float, s1: inout Float, s2: inout Float) -> Float {
        switch k.kind {
        case .adam, .adamw:
            s1 = s1 * k.b1 + g * k.oneMinusB1
            s2 = s2 * k.b2 + k.oneMinusB2 * g * g
            if k.wd > 0 { p = p * k.decay }
            return s1 / (s2.squareRoot() + k.epsC2)
        case .momentum:
            let gw = k.wd > 0 ? g + p * k.wd : g
            s1 = k.step == 1 ? gw : s1 * k.b1 + gw
            return s1
        case .lion:
            if k.wd > 0 { p = p * k.decay }
            let u = s1 * k.b1 + g * k.oneMinusB1
            s1 = s1 * k.b2 + g * k.oneMinusB2
            return sign(u)
        case .rmsprop:
            let gw = k.wd > 0 ? g + p * k.wd : g
            s1 = s1 * k.b1 + k.oneMinusB1 * gw * gw
            return gw / (s1.squareRoot() + k.eps)
        case .adagrad:
            let gw = k.wd > 0 ? g + p * k.wd : g
            s1 = s1 + gw * gw
            return gw / (s1.squareRoot() + k.eps)
        }
    }

    /// The factor multiplying the update for 32-bit state: Adam's step size,
    /// or -lr for the others.
    static func alpha32(_ k: UpdateScalars) -> Float {
        switch k.kind {
        case .adam, .adamw: Float(k.stepSize32)
        default: -k.lr
        }
    }

    /// One element with dequantized 8-bit state (upstream's 8-bit formulas).
    @inline(__always)
    static func update8(_ k: UpdateScalars, g: Float, p: inout Float, s1: inout Float, s2: inout Float) {
        switch k.kind {
        case .adam, .adamw:
            s1 = s1 * k.b1 + g * k.oneMinusB1
            s2 = s2 * k.b2 + k.oneMinusB2 * g * g
            let denom = s2.squareRoot() / k.c2 + k.eps
            if k.wd > 0 { p = p * k.decay }
            p = p + k.negLrOverC1 * (s1 / denom)
        case .momentum:
            let gw = g + p * k.wd
            s1 = k.step == 1 ? gw : s1 * k.b1 + gw
            p = p + s1 * -k.lr
        case .lion:
            if k.wd > 0 { p = p * k.decay }
            let u = sign(s1 * k.b1 + g * k.oneMinusB1)
            p = p + u * -k.lr
            s1 = s1 * k.b2 + g * k.oneMinusB2
        case .rmsprop:
            let gw = g + p * k.wd
            s1 = s1 * k.b1 + k.oneMinusB1 * gw * gw
            p = p + -k.lr * (gw / (s1.squareRoot() + k.eps))
        case .adagrad:
            let gw = g + p * k.wd
            s1 = s1 + gw * gw
            p = p + -k.lr * (gw / (s1.squareRoot() + k.eps))
        }
    }

    @inline(__always) static func sign(_ x: Float) -> Float { x > 0 ? 1 : (x < 0 ? -1 : 0) }
}
