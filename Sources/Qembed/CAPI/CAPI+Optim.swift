import CQembed
import QembedCore

func optimizer(_ p: OpaquePointer?) throws(QembedError) -> Optimizer {
    guard let p else { throw QembedError(.nullPointer, "optimizer handle is NULL") }
    return Unmanaged<Optimizer>.fromOpaque(UnsafeRawPointer(p)).takeUnretainedValue()
}

private func kind(_ raw: CInt) throws(QembedError) -> OptimizerKind {
    guard let k = OptimizerKind(rawValue: raw) else { throw .invalid("kind: unknown optimizer kind \(raw)") }
    return k
}

@c @implementation
public func qembed_optimizer_params_init(_ p: UnsafeMutablePointer<qembed_optimizer_params>!, _ kind_: CInt, _ optim_bits: CInt) -> qembed_status {
    capi { () throws(QembedError) in
        let out = try need(p, "p")
        try OptimizerConfig.checkBits(Int(optim_bits))
        let c = OptimizerConfig.defaults(try kind(kind_), optimBits: Int(optim_bits))
        var d = qembed_optimizer_params()
        d.struct_size = UInt32(MemoryLayout<qembed_optimizer_params>.size)
        d.kind = c.kind.rawValue
        d.lr = c.lr; d.beta1 = c.beta1; d.beta2 = c.beta2; d.eps = c.eps; d.weight_decay = c.weightDecay
        d.optim_bits = CInt(c.optimBits); d.min_8bit_size = Int64(c.min8bitSize); d.max_unorm = c.maxUnorm
        d.skip_zeros = c.skipZeros
        out.pointee = d
    }
}

@c @implementation
public func qembed_optimizer_create(_ p: UnsafePointer<qembed_optimizer_params>!, _ params: UnsafePointer<OpaquePointer?>!,
                                    _ n_params: Int64, _ out: UnsafeMutablePointer<OpaquePointer?>!) -> qembed_status {
    out?.pointee = nil
    return capi { () throws(QembedError) in
        let o = try need(out, "out")
        let d = try need(p, "p").pointee
        try checkStructSize(d.struct_size, MemoryLayout<qembed_optimizer_params>.size, "p")
        let n = try count(n_params, "n_params")
        let list = try need(params, "params")
        var ps: [Parameter] = []
        for i in 0..<n {
            guard let h = list[i] else { throw QembedError(.nullPointer, "params[\(i)] is NULL") }
            ps.append(try parameter(h))
        }
        let opt = try Optimizer(try config(of: d), params: ps)
        o.pointee = OpaquePointer(Unmanaged.passRetained(opt).toOpaque())
    }
}

/// The one conversion of the C parameters struct into a core config.
private func config(of d: qembed_optimizer_params) throws(QembedError) -> OptimizerConfig {
    guard d.min_8bit_size >= 0 else { throw .invalid("min_8bit_size must be >= 0, got \(d.min_8bit_size)") }
    var c = OptimizerConfig.defaults(try kind(d.kind), optimBits: 32)
    c.lr = d.lr; c.beta1 = d.beta1; c.beta2 = d.beta2; c.eps = d.eps; c.weightDecay = d.weight_decay
    c.optimBits = Int(d.optim_bits); c.min8bitSize = Int(d.min_8bit_size); c.maxUnorm = d.max_unorm
    c.skipZeros = d.skip_zeros
    return c
}

@c @implementation
public func qembed_optimizer_set_params(_ o: OpaquePointer!, _ p: UnsafePointer<qembed_optimizer_params>!) -> qembed_status {
    capi { () throws(QembedError) in
        let opt = try optimizer(o)
        let d = try need(p, "p").pointee
        try checkStructSize(d.struct_size, MemoryLayout<qembed_optimizer_params>.size, "p")
        try opt.setConfig(try config(of: d))
    }
}

@c @implementation
public func qembed_optimizer_free(_ o: OpaquePointer!) {
    guard let o else { return }
    Unmanaged<Optimizer>.fromOpaque(UnsafeRawPointer(o)).release()
}

@c @implementation
public func qembed_optimizer_step(_ o: OpaquePointer!) -> qembed_status {
    capi { () throws(QembedError) in try optimizer(o).step() }
}

@c @implementation
public func qembed_optimizer_step_all(_ optimizers: UnsafePointer<OpaquePointer?>!, _ n: Int64) -> qembed_status {
    capi { () throws(QembedError) in
        let total = try count(n, "n", minimum: 0)
        if total == 0 { return }
        let list = try need(optimizers, "optimizers")
        var os: [Optimizer] = []
        for i in 0..<total {
            guard let h = list[i] else { throw QembedError(.nullPointer, "optimizers[\(i)] is NULL") }
            os.append(try optimizer(h))
        }
        try Optimizer.step(os)
    }
}

@c @implementation
public func qembed_optimizer_zero_grad(_ o: OpaquePointer!) -> qembed_status {
    capi { () throws(QembedError) in try optimizer(o).zeroGrad() }
}

private func paramIndex(_ opt: Optimizer, _ i: Int64) throws(QembedError) -> Int {
    guard i >= 0 && i < Int64(opt.params.count) else {
        throw QembedError(.outOfRange, "i = \(i) is out of range: the optimizer has \(opt.params.count) parameters")
    }
    return Int(i)
}

@c @implementation
public func qembed_optimizer_state_info_get(_ o: OpaquePointer!, _ i: Int64, _ info: UnsafeMutablePointer<qembed_optimizer_state_info>!) -> qembed_status {
    capi { () throws(QembedError) in
        let opt = try optimizer(o)
        let k = try paramIndex(opt, i)
        let out = try need(info, "info")
        try checkStructSize(out.pointee.struct_size, MemoryLayout<qembed_optimizer_state_info>.size, "info")
        let p = opt.params[k], s = opt.states[k]
        var d = qembed_optimizer_state_info()
        d.struct_size = out.pointee.struct_size
        d.initialized = s != nil
        d.step = Int64(s?.step ?? 0)
        d.bits = CInt(opt.bits(for: k))
        d.num_states = CInt(opt.config.kind.stateCount)
        d.numel = Int64(p.numel)
        let rowAligned = p.sparse && p.shape.count == 2
        d.row_aligned = d.bits == 8 && rowAligned
        d.num_blocks = d.bits == 8 ? Int64(OptimizerState.blockCount(numel: p.numel, cols: p.cols, rowAligned: rowAligned)) : 0
        d.state_bytes = Int64(s?.bytes ?? 0)
        out.pointee = d
    }
}

@c @implementation
public func qembed_optimizer_state_export(_ o: OpaquePointer!, _ i: Int64,
                                          _ state1: UnsafeMutableRawPointer!, _ state1_bytes: Int64,
                                          _ state2: UnsafeMutableRawPointer!, _ state2_bytes: Int64,
                                          _ absmax1: UnsafeMutablePointer<Float>!, _ absmax1_len: Int64,
                                          _ absmax2: UnsafeMutablePointer<Float>!, _ absmax2_len: Int64) -> qembed_status {
    capi { () throws(QembedError) in
        let opt = try optimizer(o)
        let k = try paramIndex(opt, i)
        guard let s = opt.savedState(k) else {
            throw .invalid("parameter \(k) has no optimizer state yet (it is created by the first step)")
        }
        // Check every capacity before writing anything.
        if state1 != nil { try capacity(state1_bytes, s.state1.count, "state1") }
        if state2 != nil { guard let s2 = s.state2 else { throw .invalid("state2: this optimizer keeps one state") }; try capacity(state2_bytes, s2.count, "state2") }
        if absmax1 != nil { guard let a = s.absmax1 else { throw .invalid("absmax1: the state is 32-bit") }; try capacity(absmax1_len, a.count, "absmax1") }
        if absmax2 != nil { guard let a = s.absmax2 else { throw .invalid("absmax2: no 8-bit state2") }; try capacity(absmax2_len, a.count, "absmax2") }
        if let d = state1 { s.state1.withUnsafeBytes { d.copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
        if let d = state2, let v = s.state2 { v.withUnsafeBytes { d.copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
        if let d = absmax1, let v = s.absmax1 { for (j, x) in v.enumerated() { d[j] = x } }
        if let d = absmax2, let v = s.absmax2 { for (j, x) in v.enumerated() { d[j] = x } }
    }
}

@c @implementation
public func qembed_optimizer_state_import(_ o: OpaquePointer!, _ i: Int64, _ step: Int64, _ bits: CInt,
                                          _ state1: UnsafeRawPointer!, _ state1_bytes: Int64,
                                          _ state2: UnsafeRawPointer!, _ state2_bytes: Int64,
                                          _ absmax1: UnsafePointer<Float>!, _ absmax1_len: Int64,
                                          _ absmax2: UnsafePointer<Float>!, _ absmax2_len: Int64) -> qembed_status {
    capi { () throws(QembedError) in
        let opt = try optimizer(o)
        let k = try paramIndex(opt, i)
        let s1 = try need(state1, "state1")
        for (name, v) in [("state1_bytes", state1_bytes), ("state2_bytes", state2_bytes), ("absmax1_len", absmax1_len), ("absmax2_len", absmax2_len)] {
            guard v >= 0 && v <= Int64(Int.max / 16) else { throw .invalid("\(name) = \(v) is invalid") }
        }
        func bytes(_ p: UnsafeRawPointer?, _ n: Int64) -> [UInt8]? { p.map { Array(UnsafeRawBufferPointer(start: $0, count: Int(n))) } }
        func floats(_ p: UnsafePointer<Float>?, _ n: Int64) -> [Float]? { p.map { Array(UnsafeBufferPointer(start: $0, count: Int(n))) } }
        let saved = Optimizer.SavedState(step: Int(step), bits: Int(bits), state1: bytes(s1, state1_bytes)!,
                                         state2: bytes(state2, state2_bytes), absmax1: floats(absmax1, absmax1_len),
                                         absmax2: floats(absmax2, absmax2_len))
        try opt.load(k, saved)
    }
}
