/// The overflow guard of an optimizer step: a step never leaves a NaN or an
/// infinity in a parameter or its state. A finite but huge gradient (say
/// 1e30, whose square overflows Adam's second moment), eps = 0 (0/0 where
/// the gradient and the state are zero) or an f16 parameter pushed past
/// 65504 would; such a step is refused with `.nonFinite` and changes nothing.
///
/// Cheap path: each state keeps upper bounds of its magnitudes (tracked in
/// double from the gradient's largest magnitude, which the step's
/// finiteness scan yields anyway, and recomputed exactly on load). From
/// them `plan` proves, per rule, that no new state value, no intermediate
/// and no parameter update can overflow; then the step runs unchecked.
/// Otherwise (rare) the parameter's data and state are copied first, the
/// step runs, the results are scanned, and on a non-finite value everything
/// is restored and the step is refused.
struct StepPlan {
    /// true: the step provably produces only finite values.
    var safe: Bool
    /// Bounds of |state1| and |state2| after the step.
    var bound1: Double, bound2: Double
}

enum StepGuard {
    /// State bounds below this leave room for every float32 intermediate.
    static let stateLimit = 0x1p120
    /// Adding less than half an ulp of Float.greatestFiniteMagnitude (2^103)
    /// to a finite float32 or bfloat16 cannot overflow.
    static let updateLimit = 0x1p100
    /// Slack for float32 rounding: a bound times this exceeds the float result.
    static let slack = 1 + 1e-5

    /// `g`: max |gradient|; `pmax` scans max |parameter| when a rule needs it.
    static func plan(_ c: OptimizerConfig, _ k: UpdateScalars, bits: Int, dtype: DType, state: OptimizerState,
                     g: Double, pmax: () -> Double) -> StepPlan {
        let lr = c.lr, wd = c.weightDecay, eps = c.eps
        let decay = abs(Double(k.decay))
        let decayInState = wd > 0 && (c.kind == .momentum || c.kind == .rmsprop || c.kind == .adagrad)
        let needP = decayInState || decay > 1 || dtype == .f16
        let p = needP ? pmax() : 0
        guard p.isFinite else { return StepPlan(safe: false, bound1: .infinity, bound2: .infinity) }
        let gw = decayInState ? g + wd * p : g
        let s1 = state.bound1, s2 = state.bound2
        var n1 = 0.0, n2 = 0.0, u = 0.0  // u: bound of |change of p| from the update term
        switch c.kind {
        case .adam, .adamw:
            n1 = c.beta1 * s1 + (1 - c.beta1) * g
            n2 = c.beta2 * s2 + (1 - c.beta2) * g * g
            u = bits == 8 ? abs(Double(k.negLrOverC1)) * n1 / eps : abs(Double(k.stepSize32)) * n1 / Double(k.epsC2)
        case .momentum:
            n1 = k.firstStep ? gw : c.beta1 * s1 + gw
            u = lr * n1
        case .lion:
            n1 = c.beta2 * s1 + (1 - c.beta2) * g
            u = lr
        case .rmsprop:
            n1 = c.beta1 * s1 + (1 - c.beta1) * gw * gw
            u = lr * gw / eps
        case .adagrad:
            n1 = s1 + gw * gw
            u = lr * gw / eps
        }
        n1 *= slack; n2 *= slack; u *= slack
        var safe = n1 < stateLimit && n2 < stateLimit && u.isFinite
        if dtype == .f16 {
            safe = safe && decay * p + u < 65504
        } else if needP {
            safe = safe && decay * p + u < 0x1p127
        } else {
            safe = safe && u < updateLimit
        }
        return StepPlan(safe: safe, bound1: n1, bound2: n2)
    }

    /// max |value| of a state's buffers: the floats of a 32-bit state, the
    /// absmax of an 8-bit one (codes lie in [-1, 1]). Infinity when any is not finite.
    static func measure(_ s: OptimizerState) -> (Double, Double) {
        func m(_ b: AlignedBuffer?, _ count: Int) -> Double { b.map { Absmax.maxMagnitude(.f32, $0.raw, count) } ?? 0 }
        if s.bits == 8 { return (m(s.absmax1, s.blocks), m(s.absmax2, s.blocks)) }
        return (m(s.state1, s.numel), m(s.state2, s.numel))
    }

    /// A copy of a parameter's data and state, to restore a refused step.
    final class Snapshot {
        let param: Parameter, state: OptimizerState
        let saved: [(AlignedBuffer, AlignedBuffer)]
        let step: Int, bound1: Double, bound2: Double

        init(_ p: Parameter, _ s: OptimizerState) throws(QembedError) {
            param = p; state = s
            var pairs: [(AlignedBuffer, AlignedBuffer)] = []
            for b in [p.data, s.state1, s.state2, s.absmax1, s.absmax2].compactMap({ $0 }) {
                let copy = try AlignedBuffer(byteCount: b.byteCount, zeroed: false)
                copy.raw.copyMemory(from: b.raw, byteCount: b.byteCount)
                pairs.append((b, copy))
            }
            saved = pairs
            step = s.step; bound1 = s.bound1; bound2 = s.bound2
        }

        func restore() {
            for (b, copy) in saved { b.raw.copyMemory(from: copy.raw, byteCount: b.byteCount) }
            state.step = step; state.bound1 = bound1; state.bound2 = bound2
        }

        /// After the step: throws when the parameter or its state holds a
        /// non-finite value (the caller restores), else sets exact bounds.
        func verify() throws(QembedError) {
            let p = param
            let bad = Absmax.maxMagnitude(p.dtype, p.data.raw, p.numel) == .infinity
            let (b1, b2) = StepGuard.measure(state)
            guard !bad, b1.isFinite, b2.isFinite else {
                throw QembedError(.nonFinite, "optimizer step refused: the update of \(p.name) would make "
                                  + (bad ? "the parameter" : "its optimizer state")
                                  + " non-finite (an overflow from a huge gradient, state or learning rate, or 0/0 with eps = 0);"
                                  + " parameter and state are unchanged")
            }
            state.bound1 = b1; state.bound2 = b2
        }
    }
}
