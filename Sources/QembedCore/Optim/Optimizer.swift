/// The optimizers of bitsandbytes (adam, adamw, momentum, lion, rmsprop,
/// adagrad) with 32-bit or blockwise 8-bit state, per-parameter overrides
/// (read from each Parameter, so an override never leaks to another
/// parameter or optimizer), sparse row updates, and state save/load.
///
/// step(): every parameter that has a gradient is updated. All gradients are
/// checked first: a NaN/Inf gradient skips the whole step (nothing changes)
/// and is reported as `.nonFinite`; so is a step that would overflow a
/// parameter or its state (see StepGuard). Sparse gradients update only the touched
/// rows; untouched rows' state is not decayed (as torch's SparseAdam). The
/// 8-bit step is one fused pass per block: dequantize the block's state,
/// update the parameter, requantize with the exact nearest rule, except that
/// a positive second moment never rounds to zero (StateRounding).
public final class Optimizer: @unchecked Sendable {
    public private(set) var config: OptimizerConfig
    public let params: [Parameter]
    public private(set) var states: [OptimizerState?]
    private let lock = RWLock()

    public init(_ config: OptimizerConfig, params: [Parameter]) throws(QembedError) {
        try config.validate()
        guard !params.isEmpty else { throw .invalid("params: an optimizer needs at least one parameter") }
        for (i, p) in params.enumerated() where params[..<i].contains(where: { $0 === p }) {
            throw .invalid("params[\(i)] (\(p.name)) appears twice")
        }
        self.config = config
        self.params = params
        states = Array(repeating: nil, count: params.count)
    }

    /// Replaces the hyperparameters in place (a learning-rate schedule changes
    /// lr every step): validated first, all or nothing; the kind cannot change.
    /// optim_bits and min_8bit_size apply to states created afterwards (a
    /// state keeps the width it was created with, as in bitsandbytes). The
    /// states and their step counts are kept.
    public func setConfig(_ c: OptimizerConfig) throws(QembedError) {
        try c.validate()
        try lock.withExclusive { () throws(QembedError) in
            guard c.kind == config.kind else {
                throw .invalid("kind: an optimizer's kind cannot change (\(config.kind.name) -> \(c.kind.name)); create a new optimizer")
            }
            for p in params { try c.resolved(for: p).validate() }
            config = c
        }
    }

    /// The config in force for parameter i (overrides applied).
    public func config(for i: Int) -> OptimizerConfig { config.resolved(for: params[i]) }

    /// 8 or 32: the state width parameter i gets (or has).
    public func bits(for i: Int) -> Int {
        if let s = states[i] { return s.bits }
        let c = config(for: i)
        return c.optimBits == 8 && params[i].stateSelectionNumel >= c.min8bitSize ? 8 : 32
    }

    private func makeState(_ i: Int) throws(QembedError) -> OptimizerState {
        if let s = states[i] { return s }
        let p = params[i]
        let s = try OptimizerState(bits: bits(for: i), numel: p.numel, cols: p.cols,
                                   rowAligned: p.sparse && p.shape.count == 2, states: config.kind.stateCount)
        states[i] = s
        return s
    }

    public func step() throws(QembedError) { try Optimizer.step([self]) }

    /// Steps several optimizers as one update: every gradient of every
    /// optimizer is validated first, and a step refused anywhere (a non-finite
    /// gradient, an update that would overflow) changes nothing in any of
    /// them. The optimizers' locks are taken in a fixed order, so concurrent
    /// calls over overlapping sets cannot deadlock.
    public static func step(_ optimizers: [Optimizer]) throws(QembedError) {
        var seen = Set<ObjectIdentifier>()
        for (k, o) in optimizers.enumerated() where !seen.insert(ObjectIdentifier(o)).inserted {
            throw .invalid("optimizers[\(k)] appears twice")
        }
        let ordered = optimizers.sorted { ObjectIdentifier($0) < ObjectIdentifier($1) }
        try withLocks(ordered[...]) { () throws(QembedError) in try stepLocked(optimizers) }
    }

    private static func withLocks(_ os: ArraySlice<Optimizer>, _ body: () throws(QembedError) -> Void) throws(QembedError) {
        guard let first = os.first else { return try body() }
        try first.lock.withExclusive { () throws(QembedError) in try withLocks(os.dropFirst(), body) }
    }

    /// Gradient checks of one optimizer: the parameters to update and the
    /// largest gradient magnitude of each (it feeds the overflow guard).
    private func validateGradients() throws(QembedError) -> [(index: Int, gmax: Double)] {
        var work: [(index: Int, gmax: Double)] = []
        for (i, p) in params.enumerated() {
            let c = config(for: i)
            try c.validate()
            let gmax: Double
            if p.sparse {
                if p.sparseRows.isEmpty {
                    // An empty sparse gradient: the step counts (no row changes).
                    if p.sparseGradPresent { work.append((i, 0)) }
                    continue
                }
                if c.maxUnorm > 0 && c.kind != .lion && c.kind != .adagrad && bits(for: i) == 32 {
                    throw .unsupported("max_unorm is not supported with sparse gradients (\(p.name))")
                }
                gmax = try checkFinite(F32.self, p.sparseValues, p.sparseValues.count, argument: "\(p.name).grad")
            } else {
                guard let g = p.grad else { continue }
                gmax = try checkFinite(F32.self, g.raw, p.numel, argument: "\(p.name).grad")
            }
            work.append((i, gmax))
        }
        return work
    }

    /// step() of every optimizer, under all their locks.
    private static func stepLocked(_ optimizers: [Optimizer]) throws(QembedError) {
        // Validate every gradient before changing anything.
        var work: [[(index: Int, gmax: Double)]] = []
        for o in optimizers { work.append(try o.validateGradients()) }
        let fresh = optimizers.indices.map { k in work[k].map(\.index).filter { optimizers[k].states[$0] == nil } }
        var snapshots: [StepGuard.Snapshot] = []
        var committed = optimizers.map { _ in Set<Int>() }  // updates that stand even if a later one fails (out of memory only)
        do throws(QembedError) {
            for (k, o) in optimizers.enumerated() { for (i, _) in work[k] { _ = try o.makeState(i) } }
            // Plan every update; the ones not provably finite run first,
            // each from a snapshot, so a refused step restores them all
            // before any other parameter changed.
            var risky: [(Int, Int)] = [], safe: [(Int, Int, StepPlan)] = []
            for (k, o) in optimizers.enumerated() {
                for (i, g) in work[k] {
                    let p = o.params[i], s = o.states[i]!, c = o.config(for: i)
                    let plan = StepGuard.plan(c, UpdateScalars(c, step: s.step + 1), bits: s.bits, dtype: p.dtype, state: s, g: g) {
                        p.lock.withShared { Absmax.maxMagnitude(p.dtype, p.data.raw, p.numel) }
                    }
                    if plan.safe { safe.append((k, i, plan)) } else { risky.append((k, i)) }
                }
            }
            // Copy, update and check under the parameter's lock, so no
            // forward sees a refused update; a refused one is restored
            // before the lock is released.
            for (k, i) in risky {
                let o = optimizers[k]
                try o.params[i].lock.withExclusive { () throws(QembedError) in
                    let snapshot = try StepGuard.Snapshot(o.params[i], o.states[i]!)
                    try o.updateLocked(i)
                    do throws(QembedError) { try snapshot.verify() } catch { snapshot.restore(); throw error }
                    snapshots.append(snapshot)
                }
            }
            snapshots.removeAll()
            for (k, i) in risky { committed[k].insert(i) }
            for (k, i, plan) in safe {
                let o = optimizers[k]
                try o.params[i].lock.withExclusive { () throws(QembedError) in try o.updateLocked(i) }
                o.states[i]!.bound1 = plan.bound1
                o.states[i]!.bound2 = plan.bound2
                committed[k].insert(i)
            }
        } catch {
            for snapshot in snapshots.reversed() { snapshot.param.lock.withExclusive { snapshot.restore() } }
            for (k, o) in optimizers.enumerated() { for i in fresh[k] where !committed[k].contains(i) { o.states[i] = nil } }
            throw error
        }
    }

    /// One parameter's update (validated and planned by step()); the caller
    /// holds the parameter's lock.
    private func updateLocked(_ i: Int) throws(QembedError) {
        let p = params[i], s = states[i]!, c = config(for: i)
        s.step += 1
        let k = UpdateScalars(c, step: s.step)
        if p.sparse {
            try SparseStep.run(k, c, p, s)
        } else if s.bits == 8 {
            try EightBitStep.dense(k, c, p, s)
        } else {
            try DenseStep32.run(k, c, p, s)
        }
    }

    public func zeroGrad() {
        for p in params { p.lock.withExclusive { p.zeroGrad() } }
    }

    /// Total bytes of optimizer state held.
    public var stateBytes: Int { states.reduce(0) { $0 + ($1?.bytes ?? 0) } }

    // MARK: State save/load

    public struct SavedState {
        public var step: Int
        public var bits: Int
        public var state1: [UInt8]   // raw bytes (floats for 32-bit)
        public var state2: [UInt8]?
        public var absmax1: [Float]?
        public var absmax2: [Float]?
        public init(step: Int, bits: Int, state1: [UInt8], state2: [UInt8]?, absmax1: [Float]?, absmax2: [Float]?) {
            self.step = step; self.bits = bits; self.state1 = state1; self.state2 = state2; self.absmax1 = absmax1; self.absmax2 = absmax2
        }
    }

    public func savedState(_ i: Int) -> SavedState? {
        lock.withShared {
            guard let s = states[i] else { return nil }
            func bytes(_ b: AlignedBuffer) -> [UInt8] { Array(UnsafeRawBufferPointer(start: b.raw, count: b.byteCount)) }
            func floats(_ b: AlignedBuffer?) -> [Float]? { b.map { Array(UnsafeBufferPointer(start: $0.floats(), count: $0.byteCount / 4)) } }
            return SavedState(step: s.step, bits: s.bits, state1: bytes(s.state1), state2: s.state2.map(bytes),
                              absmax1: floats(s.absmax1), absmax2: floats(s.absmax2))
        }
    }

    /// Replaces parameter i's state; every size is checked first, and on
    /// failure nothing changes.
    public func load(_ i: Int, _ saved: SavedState) throws(QembedError) {
        try lock.withExclusive { () throws(QembedError) in
            let p = params[i]
            try OptimizerConfig.checkBits(saved.bits, argument: "bits")
            guard saved.step >= 0 else { throw .invalid("step must be >= 0, got \(saved.step)") }
            let s = try OptimizerState(bits: saved.bits, numel: p.numel, cols: p.cols,
                                       rowAligned: p.sparse && p.shape.count == 2, states: config.kind.stateCount)
            func fill(_ dst: AlignedBuffer?, _ src: [UInt8]?, _ what: String) throws(QembedError) {
                guard let dst else {
                    if src != nil { throw .shape("\(what) given but \(config.kind.name) keeps no such state") }
                    return
                }
                guard let src, src.count == dst.byteCount else {
                    throw .shape("\(what) of \(p.name) must hold \(dst.byteCount) bytes, got \(src?.count ?? 0)")
                }
                src.withUnsafeBytes { dst.raw.copyMemory(from: $0.baseAddress!, byteCount: src.count) }
            }
            try fill(s.state1, saved.state1, "state1")
            try fill(s.state2, saved.state2, "state2")
            try fill(s.absmax1, saved.absmax1.map { $0.withUnsafeBytes { Array($0) } }, "absmax1")
            try fill(s.absmax2, saved.absmax2.map { $0.withUnsafeBytes { Array($0) } }, "absmax2")
            if saved.bits == 32 {
                try checkFinite(F32.self, s.state1.raw, p.numel, argument: "state1")
                if let s2 = s.state2 { try checkFinite(F32.self, s2.raw, p.numel, argument: "state2") }
            } else {
                try checkFinite(F32.self, s.absmax1!.raw, s.blocks, argument: "absmax1")
                if let a2 = s.absmax2 { try checkFinite(F32.self, a2.raw, s.blocks, argument: "absmax2") }
                // A state written before the second-moment floor (or by
                // bitsandbytes) may hold v = 0 beside m != 0: raise it.
                if let q2 = s.state2 {
                    StateRounding.repairLoaded(q1: s.state1.raw.assumingMemoryBound(to: UInt8.self),
                                               q2: q2.raw.assumingMemoryBound(to: UInt8.self), count: p.numel)
                }
            }
            s.step = saved.step
            (s.bound1, s.bound2) = StepGuard.measure(s)
            states[i] = s
        }
    }
}
