import CQembedSIMD

/// The element loops of an optimizer step, specialized per rule R and
/// parameter element type E (both generic, so each combination compiles to
/// its own branch-free loop).
enum StepKernels {
    /// 32-bit state over `count` elements; 8 lanes at a time, then a
    /// 1-lane tail. With skip_zeros, lanes whose gradient is exactly 0 keep
    /// their parameter and state.
    @inline(__always)
    static func run32<R: UpdateRule, E: FloatElement>(_ r: R.Type, _ e: E.Type, _ k: UpdateScalars, alpha: Float, skipZeros: Bool,
                                                      p: UnsafeMutablePointer<E.Storage>, g: UnsafePointer<Float>,
                                                      s1: UnsafeMutablePointer<Float>, s2: UnsafeMutablePointer<Float>?,
                                                      count: Int) {
        var i = 0
        while i + 8 <= count {
            let gv = load8(g + i)
            let p0 = E.load8(p, i), a0 = load8(s1 + i), b0 = s2.map { load8($0 + i) } ?? SIMD8()
            var pv = p0, a = a0, b = b0
            let u = R.update32(k, gv, &pv, &a, &b)
            pv = pv + alpha * u
            if skipZeros {
                let z = gv .== 0
                pv.replace(with: p0, where: z); a.replace(with: a0, where: z); b.replace(with: b0, where: z)
            }
            E.store8(pv, p, i)
            store8(a, s1 + i)
            if let s2 { store8(b, s2 + i) }
            i += 8
        }
        while i < count {
            if !(skipZeros && g[i] == 0) {
                var pv = SIMD2(repeating: E.load(p, i)), a = SIMD2(repeating: s1[i]), b = SIMD2(repeating: s2?[i] ?? 0)
                let u = R.update32(k, SIMD2(repeating: g[i]), &pv, &a, &b)
                E.store((pv + alpha * u)[0], p, i)
                s1[i] = a[0]
                s2?[i] = b[0]
            }
            i += 1
        }
    }

    /// The fused 8-bit step of one block: one pass dequantizes the state,
    /// updates parameter and state and tracks the new absmax; then the state
    /// is requantized with the exact rule, square states floored (StateRounding). `t1`/`t2` are scratch for >= count floats.
    @inline(__always)
    static func block8<R: UpdateRule, E: FloatElement>(_ r: R.Type, _ e: E.Type, _ k: UpdateScalars, skipZeros: Bool,
                                                       p: UnsafeMutablePointer<E.Storage>, g: UnsafePointer<Float>,
                                                       q1: UnsafeMutablePointer<UInt8>, a1: UnsafeMutablePointer<Float>,
                                                       q2: UnsafeMutablePointer<UInt8>?, a2: UnsafeMutablePointer<Float>?,
                                                       t1: UnsafeMutablePointer<Float>, t2: UnsafeMutablePointer<Float>, count: Int) {
        let c1 = QuantMap.signedDynamicPointer, c2 = QuantMap.unsignedDynamicPointer
        let m1 = a1.pointee, m2 = a2?.pointee ?? 0
        let twoStates = R.twoStates
        // With VBMI the block's states are dequantized into t1/t2 first (64 codes per lookup).
        let pre = VBMI.enabled
        if pre {
            VBMI.dequantize(VBMI.signedDequant.pointer!, q1, count, m1, t1)
            if twoStates { VBMI.dequantize(VBMI.unsignedDequant.pointer!, q2!, count, m2, t2) }
        }
        let magnitude = SIMD8<Int32>(repeating: 0x7FFF_FFFF)
        var max1 = SIMD8<Int32>(repeating: 0), max2 = max1  // magnitude bits: integer order is |x| order
        var j = 0
        while j + 8 <= count {
            let gv = load8(g + j)
            let p0 = E.load8(p, j), a0 = pre ? load8(t1 + j) : dequantize8(q1 + j, c1) * m1
            let b0 = twoStates ? (pre ? load8(t2 + j) : dequantize8(q2! + j, c2) * m2) : SIMD8()
            var pv = p0, a = a0, b = b0
            R.update8(k, gv, &pv, &a, &b)
            if skipZeros {
                let z = gv .== 0
                pv.replace(with: p0, where: z); a.replace(with: a0, where: z); b.replace(with: b0, where: z)
            }
            E.store8(pv, p, j)
            store8(a, t1 + j)
            let ma = unsafeBitCast(a, to: SIMD8<Int32>.self) & magnitude
            max1.replace(with: ma, where: ma .> max1)
            if twoStates {
                store8(b, t2 + j)
                let mb = unsafeBitCast(b, to: SIMD8<Int32>.self) & magnitude
                max2.replace(with: mb, where: mb .> max2)
            }
            j += 8
        }
        var top1: UInt32 = 0, top2: UInt32 = 0  // (SIMD .max() is an out-of-line generic call)
        for l in 0..<8 { top1 = max(top1, UInt32(max1[l])); top2 = max(top2, UInt32(max2[l])) }
        while j < count {
            var pv = SIMD2(repeating: E.load(p, j)), a = SIMD2(repeating: c1[Int(q1[j])] * m1)
            var b = SIMD2(repeating: twoStates ? c2[Int(q2![j])] * m2 : 0)
            if !(skipZeros && g[j] == 0) {
                R.update8(k, SIMD2(repeating: g[j]), &pv, &a, &b)
                E.store(pv[0], p, j)
            }
            t1[j] = a[0]
            t2[j] = b[0]
            top1 = max(top1, a[0].bitPattern & 0x7FFF_FFFF)
            top2 = max(top2, b[0].bitPattern & 0x7FFF_FFFF)
            j += 1
        }
        requantize(t1, count, Float(bitPattern: top1), CodeSearch.signedDynamic, q1, a1,
                   floorAbove: R.squareState1 ? StateRounding.zeroSigned : nil)
        if let q2, let a2 {
            requantize(t2, count, Float(bitPattern: top2), CodeSearch.unsignedDynamic, q2, a2, floorAbove: StateRounding.zeroUnsigned)
        }
    }

    /// code[q[i]] for 8 bytes.
    @inline(__always)
    static func dequantize8(_ q: UnsafePointer<UInt8>, _ code: UnsafePointer<Float>) -> SIMD8<Float> {
        return SIMD8(code[Int(q[0])], code[Int(q[1])], code[Int(q[2])], code[Int(q[3])],
              code[Int(q[4])], code[Int(q[5])], code[Int(q[6])], code[Int(q[7])])
    }

    /// Stores absmax `m` and the codes of count floats: the exact nearest
    /// ones, and with `floorAbove` (the code's zero index) no positive value
    /// at the zero code (the optimizer-state rule, see StateRounding).
    @inline(__always)
    static func requantize(_ t: UnsafeMutablePointer<Float>, _ count: Int, _ m: Float, _ search: CodeSearch,
                           _ q: UnsafeMutablePointer<UInt8>, _ absmax: UnsafeMutablePointer<Float>, floorAbove: UInt8?) {
        absmax.pointee = m
        let scale = BlockScale(absmax: m)
        var j = scale.divides ? 0 : search.quantize8(F32.self, t, count, reciprocal: scale.reciprocal, q)
        while j < count { q[j] = search.index(scale.scaled(t[j])); j += 1 }
        if let z = floorAbove { StateRounding.floorPositive(t, q, count, zero: z) }
    }
}

/// Dense 32-bit step: one pass (two with max_unorm, which needs the norms first).
enum DenseStep32 {
    static func run(_ k: UpdateScalars, _ c: OptimizerConfig, _ p: Parameter, _ s: OptimizerState) throws(QembedError) {
        try withRule(c.kind) { (r) throws(QembedError) in
            try withFloatElement(p.dtype) { (e) throws(QembedError) in try run(r, e, k, c, p, s) }
        }
    }

    static func run<R: UpdateRule, E: FloatElement>(_ r: R.Type, _ e: E.Type, _ k: UpdateScalars, _ c: OptimizerConfig,
                                                    _ p: Parameter, _ s: OptimizerState) throws(QembedError) {
        let n = p.numel
        let g = p.grad!.floats()
        let s1 = s.state1.floats(), s2 = s.state2?.floats()
        let data = p.data.raw.assumingMemoryBound(to: E.Storage.self)
        let usesUnorm = c.maxUnorm > 0 && c.kind != .lion && c.kind != .adagrad
        var alpha = R.alpha32(k)
        if usesUnorm {
            // max_unorm: scale = min(1, max_unorm * ||p|| / ||update||) over the whole tensor:
            // a read-only pass computes both norms (p before the step, the update as the step
            // would make it), then the ordinary step runs with alpha * scale, so no update or
            // parameter copy goes through memory.
            let (paramNorm, unorm) = norms(r, e, k, skipZeros: c.skipZeros, p: data, g: g, s1: s1, s2: s2, count: n)
            let scale = unorm > c.maxUnorm * paramNorm ? c.maxUnorm * paramNorm / unorm : 1
            alpha = Float(Double(alpha) * scale)
        }
        Parallel.forEachChunk(n, grain: 1 << 14) { rg in
            let o = rg.lowerBound
            StepKernels.run32(r, e, k, alpha: alpha, skipZeros: c.skipZeros, p: data + o, g: g + o,
                              s1: s1 + o, s2: s2.map { $0 + o }, count: rg.count)
        }
    }

    /// (||p||, ||u||) for max_unorm, u the update StepKernels.run32 would
    /// make (0 where skip_zeros skips), nothing written. Summed in float64
    /// over fixed chunks of unormChunk values (8 lanes each, then the chunks
    /// in order), so the result does not depend on the thread count.
    static func norms<R: UpdateRule, E: FloatElement>(_ r: R.Type, _ e: E.Type, _ k: UpdateScalars, skipZeros: Bool,
                                                      p data: UnsafeMutablePointer<E.Storage>, g: UnsafePointer<Float>,
                                                      s1: UnsafeMutablePointer<Float>, s2: UnsafeMutablePointer<Float>?,
                                                      count n: Int) -> (Double, Double) {
        let chunks = ceilDiv(n, unormChunk)
        let partial = UnsafeMutablePointer<Double>.allocate(capacity: 2 * max(1, chunks))
        defer { partial.deallocate() }
        Parallel.forEachChunk(chunks, grain: 1) { cr in
            for ch in cr {
                let lo = ch * unormChunk, hi = min(n, lo + unormChunk)
                var accP = SIMD8<Double>(), accU = SIMD8<Double>(), i = lo
                while i + 8 <= hi {
                    let gv = load8(g + i), p0 = E.load8(data, i)
                    var pvv = p0, a = load8(s1 + i), b = s2.map { load8($0 + i) } ?? SIMD8()
                    var uv = R.update32(k, gv, &pvv, &a, &b)
                    if skipZeros { uv.replace(with: 0, where: gv .== 0) }
                    let pd = SIMD8<Double>(p0), ud = SIMD8<Double>(uv)
                    accP += pd * pd
                    accU += ud * ud
                    i += 8
                }
                var tp = accP.sum(), tu = accU.sum()
                while i < hi {
                    let p0 = E.load(data, i)
                    tp += Double(p0) * Double(p0)
                    if !(skipZeros && g[i] == 0) {
                        var pvv = SIMD2(repeating: p0), a = SIMD2(repeating: s1[i]), b = SIMD2(repeating: s2?[i] ?? 0)
                        let u = Double(R.update32(k, SIMD2(repeating: g[i]), &pvv, &a, &b)[0])
                        tu += u * u
                    }
                    i += 1
                }
                partial[2 * ch] = tp
                partial[2 * ch + 1] = tu
            }
        }
        var pn = 0.0, un = 0.0
        for ch in 0..<chunks { pn += partial[2 * ch]; un += partial[2 * ch + 1] }
        return (pn.squareRoot(), un.squareRoot())
    }

    /// Values per float64 partial sum of the max_unorm norms (fixed: the sums do not depend on the threads).
    static let unormChunk = 1 << 14
}

/// 8-bit steps: dense over all blocks, or sparse over the touched rows' blocks.
enum EightBitStep {
    static func dense(_ k: UpdateScalars, _ c: OptimizerConfig, _ p: Parameter, _ s: OptimizerState) throws(QembedError) {
        let g = p.grad!.floats()
        try run(k, c, p, s, blocks: s.blocks) { b in (b, UnsafePointer(g + s.range(ofBlock: b).lowerBound)) }
    }

    /// Runs the fused block update over `blocks` work items; `item(w)` gives
    /// the block index and its gradient values.
    static func run(_ k: UpdateScalars, _ c: OptimizerConfig, _ p: Parameter, _ s: OptimizerState, blocks: Int,
                    item: @escaping (Int) -> (Int, UnsafePointer<Float>)) throws(QembedError) {
        try withRule(c.kind) { (r) throws(QembedError) in
            try withFloatElement(p.dtype) { (e) throws(QembedError) in run(r, e, k, c, p, s, blocks: blocks, item: item) }
        }
    }

    static func run<R: UpdateRule, E: FloatElement>(_ r: R.Type, _ e: E.Type, _ k: UpdateScalars, _ c: OptimizerConfig,
                                                    _ p: Parameter, _ s: OptimizerState, blocks: Int,
                                                    item: (Int) -> (Int, UnsafePointer<Float>)) {
        let data = p.data.raw.assumingMemoryBound(to: E.Storage.self)
        let q1 = s.state1.raw.assumingMemoryBound(to: UInt8.self)
        let q2 = s.state2.map { $0.raw.assumingMemoryBound(to: UInt8.self) }
        let a1 = s.absmax1!.floats(), a2 = s.absmax2?.floats()
        // The fused AVX-512 blocks work on float32 parameters; float16 and
        // bfloat16 blocks are widened into scratch and stored back.
        let fused = R.self == AdamRule.self ? FusedAdam8.kernel(k, skipZeros: c.skipZeros) : nil
        let fused1 = FusedStep1.kernel(r, k, skipZeros: c.skipZeros)
        let bs = OptimizerState.blocksize
        Parallel.forEachChunk(blocks, grain: 64) { rg in
            let scratch = UnsafeMutablePointer<Float>.allocate(capacity: 3 * bs)
            defer { scratch.deallocate() }
            if var fk = fused1 {
                for w in rg {
                    let (b, g) = item(w)
                    let range = s.range(ofBlock: b)
                    let lo = range.lowerBound
                    withFloat32Parameters(e, data + lo, range.count, scratch: scratch + 2 * bs) { pf in
                        FusedStep1.block(&fk, p: pf, g: g, q1: q1 + lo, a1: a1 + b, count: range.count, scratch: scratch)
                    }
                }
                return
            }
            if var fk = fused, let q2, let a2 {
                for w in rg {
                    let (b, g) = item(w)
                    let range = s.range(ofBlock: b)
                    let lo = range.lowerBound
                    withFloat32Parameters(e, data + lo, range.count, scratch: scratch + 2 * bs) { pf in
                        FusedAdam8.block(&fk, p: pf, g: g, q1: q1 + lo, a1: a1 + b, q2: q2 + lo, a2: a2 + b,
                                         count: range.count, scratch: scratch)
                    }
                }
                return
            }
            for w in rg {
                let (b, g) = item(w)
                let range = s.range(ofBlock: b)
                let lo = range.lowerBound
                // Two copies of the inlined kernel: skip_zeros is a constant in each.
                if c.skipZeros {
                    StepKernels.block8(r, e, k, skipZeros: true, p: data + lo, g: g, q1: q1 + lo, a1: a1 + b,
                                       q2: q2.map { $0 + lo }, a2: a2.map { $0 + b },
                                       t1: scratch, t2: scratch + OptimizerState.blocksize, count: range.count)
                } else {
                    StepKernels.block8(r, e, k, skipZeros: false, p: data + lo, g: g, q1: q1 + lo, a1: a1 + b,
                                       q2: q2.map { $0 + lo }, a2: a2.map { $0 + b },
                                       t1: scratch, t2: scratch + OptimizerState.blocksize, count: range.count)
                }
            }
        }
    }
}

/// The fused AVX-512 Adam/AdamW block on float32 parameter values
/// (qembed__vbmi_adam8_block; float16/bfloat16 parameters widened around it): dequantize, update, requantize and floor in
/// one call with the tables in registers, equal to StepKernels.block8 bit for
/// bit (OptimizerTests and the parity suite compare them).
enum FusedAdam8 {
    /// The kernel's constants, or nil where it does not run (no VBMI).
    static func kernel(_ k: UpdateScalars, skipZeros: Bool) -> qembed__adam8? {
        guard VBMI.enabled, let dq1 = VBMI.signedDequant.pointer, let dq2 = VBMI.unsignedDequant.pointer,
              let t1 = CodeSearch.signedDynamic.vbmi, let t2 = CodeSearch.unsignedDynamic.vbmi else { return nil }
        return qembed__adam8(dq1: dq1, dq2: dq2, q1: t1, q2: t2, b1: k.b1, b2: k.b2, one_minus_b1: k.oneMinusB1,
                             one_minus_b2: k.oneMinusB2, eps: k.eps, decay: k.decay, c2: k.c2, inv_c2: k.invC2,
                             neg_lr_over_c1: k.negLrOverC1, weight_decay: k.wd > 0 ? 1 : 0, skip_zeros: skipZeros ? 1 : 0,
                             zero1: StateRounding.zeroSigned, zero2: StateRounding.zeroUnsigned)
    }

    @inline(__always)
    static func block(_ k: inout qembed__adam8, p: UnsafeMutablePointer<Float>, g: UnsafePointer<Float>,
                      q1: UnsafeMutablePointer<UInt8>, a1: UnsafeMutablePointer<Float>,
                      q2: UnsafeMutablePointer<UInt8>, a2: UnsafeMutablePointer<Float>, count: Int,
                      scratch: UnsafeMutablePointer<Float>) {
        let t2 = scratch + OptimizerState.blocksize
        let fallback = qembed__vbmi_adam8_block(&k, p, g, q1, q2, a1, a2, count, scratch, t2)
        // A subnormal absmax (1 / absmax overflows): the dividing rule of requantize.
        if fallback & 1 != 0 {
            StepKernels.requantize(scratch, count, a1.pointee, CodeSearch.signedDynamic, q1, a1, floorAbove: nil)
        }
        if fallback & 2 != 0 {
            StepKernels.requantize(t2, count, a2.pointee, CodeSearch.unsignedDynamic, q2, a2, floorAbove: StateRounding.zeroUnsigned)
        }
    }
}

/// The fused AVX-512 block of the one-state rules (Momentum, Lion, RMSprop,
/// Adagrad) on float32 parameter values (qembed__vbmi_step1_block), equal to
/// StepKernels.block8 bit for bit (VBMITests compare them).
enum FusedStep1 {
    static func kernel<R: UpdateRule>(_ r: R.Type, _ k: UpdateScalars, skipZeros: Bool) -> qembed__step1? {
        let rule: Int32, square: Bool
        if R.self == MomentumRule.self { rule = Int32(QEMBED__RULE_MOMENTUM); square = false }
        else if R.self == LionRule.self { rule = Int32(QEMBED__RULE_LION); square = false }
        else if R.self == RMSpropRule.self { rule = Int32(QEMBED__RULE_RMSPROP); square = true }
        else if R.self == AdagradRule.self { rule = Int32(QEMBED__RULE_ADAGRAD); square = true }
        else { return nil }
        guard VBMI.enabled, let dq = VBMI.signedDequant.pointer, let t = CodeSearch.signedDynamic.vbmi else { return nil }
        return qembed__step1(dq: dq, q: t, rule: rule, b1: k.b1, b2: k.b2, one_minus_b1: k.oneMinusB1, one_minus_b2: k.oneMinusB2,
                             eps: k.eps, wd: k.wd, decay: k.decay, neg_lr: k.negLr, weight_decay: k.wd > 0 ? 1 : 0,
                             skip_zeros: skipZeros ? 1 : 0, first_step: k.firstStep ? 1 : 0, floor_state: square ? 1 : 0,
                             zero: StateRounding.zeroSigned)
    }

    @inline(__always)
    static func block(_ k: inout qembed__step1, p: UnsafeMutablePointer<Float>, g: UnsafePointer<Float>,
                      q1: UnsafeMutablePointer<UInt8>, a1: UnsafeMutablePointer<Float>, count: Int,
                      scratch: UnsafeMutablePointer<Float>) {
        if qembed__vbmi_step1_block(&k, p, g, q1, a1, count, scratch) != 0 {
            StepKernels.requantize(scratch, count, a1.pointee, CodeSearch.signedDynamic, q1, a1,
                                   floorAbove: k.floor_state != 0 ? StateRounding.zeroSigned : nil)
        }
    }
}

/// Sparse steps: only the rows present in the sparse gradient are updated.
enum SparseStep {
    static func run(_ k: UpdateScalars, _ c: OptimizerConfig, _ p: Parameter, _ s: OptimizerState) throws(QembedError) {
        let cols = p.cols
        let rows = p.sparseRows
        try p.sparseValues.withUnsafeBufferPointer { (vb) throws(QembedError) in
            let v = vb.baseAddress!
            if s.bits == 8 {
                let bpr = s.blocksPerRow
                try EightBitStep.run(k, c, p, s, blocks: rows.count * bpr) { w in
                    let t = w / bpr, j = w % bpr
                    return (rows[t] * bpr + j, v + t * cols + j * OptimizerState.blocksize)
                }
                return
            }
            try withRule(c.kind) { (r) throws(QembedError) in
                try withFloatElement(p.dtype) { (e) throws(QembedError) in
                    sparse32(r, e, k, c, p, s, rows: rows, values: v)
                }
            }
        }
    }

    static func sparse32<R: UpdateRule, E: FloatElement>(_ r: R.Type, _ e: E.Type, _ k: UpdateScalars, _ c: OptimizerConfig,
                                                         _ p: Parameter, _ s: OptimizerState, rows: [Int], values: UnsafePointer<Float>) {
        let cols = p.cols
        let data = p.data.raw.assumingMemoryBound(to: E.Storage.self)
        let s1 = s.state1.floats(), s2 = s.state2?.floats()
        Parallel.forEachChunk(rows.count, grain: max(1, 4096 / cols)) { rg in
            for t in rg {
                let o = rows[t] * cols
                StepKernels.run32(r, e, k, alpha: R.alpha32(k), skipZeros: c.skipZeros, p: data + o, g: values + t * cols,
                                  s1: s1 + o, s2: s2.map { $0 + o }, count: cols)
            }
        }
    }
}
