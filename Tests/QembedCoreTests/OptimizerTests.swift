import XCTest
@testable import QembedCore

final class OptimizerTests: XCTestCase {
    func param(_ rows: Int, _ cols: Int, sparse: Bool = false, seed: UInt64) throws -> (Embedding, Parameter) {
        let e = try Embedding(EmbeddingConfig(numEmbeddings: rows, embeddingDim: cols, sparse: sparse), seed: seed)
        e.weight.clearOverride(.optimBits)  // test the optimizer's own bits
        return (e, e.weight)
    }

    func setGrad(_ p: Parameter, _ g: [Float]) throws {
        let d = try p.denseGrad()
        for i in 0..<p.numel { d[i] = g[i] }
    }

    /// Adam 32-bit against a double-precision statement of upstream's rule.
    func testAdam32MatchesReference() throws {
        let (_, p) = try param(64, 33, seed: 1)
        var ref = (0..<p.numel).map { Double(p.value($0)) }
        var m = [Double](repeating: 0, count: p.numel), v = m
        var c = OptimizerConfig.defaults(.adamw)
        c.lr = 0.01
        let opt = try Optimizer(c, params: [p])
        var rng = Rng(2)
        for t in 1...20 {
            let g = rng.floats(p.numel, scale: 0.1)
            try setGrad(p, g)
            try opt.step()
            let c1 = 1 - pow(0.9, Double(t)), c2 = (1 - pow(0.999, Double(t))).squareRoot()
            for i in 0..<p.numel {
                let gi = Double(g[i])
                m[i] = m[i] * 0.9 + gi * 0.1
                v[i] = v[i] * 0.999 + 0.001 * gi * gi
                ref[i] *= 1 - 0.01 * 0.01
                ref[i] += -0.01 * c2 / c1 * m[i] / (v[i].squareRoot() + 1e-8 * c2)
            }
        }
        for i in 0..<p.numel { XCTAssertEqual(Double(p.value(i)), ref[i], accuracy: 1e-6 * max(0.1, abs(ref[i]))) }
    }

    /// 8-bit state tracks 32-bit state closely for every optimizer (mean
    /// deviation well under the mean movement), and holds 1 byte per element
    /// per state plus one float32 absmax per 256 elements per state.
    func testEightBitTracksThirtyTwoBit() throws {
        for kind in OptimizerKind.allCases {
            let (_, p32) = try param(40, 300, seed: 3)
            let (_, p8) = try param(40, 300, seed: 3)
            var c = OptimizerConfig.defaults(kind)
            c.lr = kind == .lion ? 1e-4 : 1e-3
            let o32 = try Optimizer(c, params: [p32])
            var c8 = c; c8.optimBits = 8
            let o8 = try Optimizer(c8, params: [p8])
            var rng = Rng(4)
            for _ in 0..<10 {
                let g = rng.floats(p32.numel, scale: 0.01)
                try setGrad(p32, g); try setGrad(p8, g)
                try o32.step(); try o8.step()
            }
            XCTAssertEqual(o8.states[0]!.bits, 8)
            var diff: Float = 0, move: Float = 0
            let (_, p0) = try param(40, 300, seed: 3)
            for i in 0..<p32.numel {
                diff += abs(p32.value(i) - p8.value(i))
                move += abs(p32.value(i) - p0.value(i))
            }
            XCTAssertLessThan(diff, 0.1 * move, "\(kind.name): 8-bit drifted \(diff) vs moves of \(move) (sums)")
            let blocks = ceilDiv(p8.numel, 256)
            XCTAssertEqual(o8.stateBytes, kind.stateCount * (p8.numel + 4 * blocks))
        }
    }

    /// Embedding-training gradients (a few rows of a block nonzero, rows
    /// spanning 1e-6 .. 10): after each 8-bit step, the stored state equals
    /// the scalar reference of the optimizer-state rule applied to the float
    /// state the rule computes from the previous (dequantized) state, byte for
    /// byte, for every rule; Adam's second moment and RMSprop/Adagrad's state
    /// never hold a positive value at the zero code.
    func testEightBitStateFollowsTheStateRoundingReference() throws {
        let rows = 64, cols = 48  // 3072 elements: 12 blocks, rows straddle blocks
        for kind in OptimizerKind.allCases {
            let (e, p) = try param(rows, cols, seed: 11)
            var c = OptimizerConfig.defaults(kind, optimBits: 8)
            c.min8bitSize = 1
            let opt = try Optimizer(c, params: [p])
            var rng = Rng(12)
            var prev1 = [Float](repeating: 0, count: p.numel), prev2 = prev1
            for t in 1...6 {
                var g = [Float](repeating: 0, count: p.numel)
                for r in 0..<rows where rng.next() % 5 == 0 {
                    let scale = Float(pow(10.0, -6.0 + 7.0 * Double(rng.next() % 1000) / 1000))
                    for j in 0..<cols { g[r * cols + j] = rng.floats(1, scale: scale)[0] }
                }
                e.zeroGrad()
                try setGrad(p, g)
                try opt.step()
                let saved = opt.savedState(0)!
                let (b1, b2) = (Float(c.beta1), Float(c.beta2))
                var n1 = [Float](repeating: 0, count: p.numel), n2 = n1
                for i in 0..<p.numel {
                    switch kind {
                    case .adam, .adamw:
                        n1[i] = prev1[i] * b1 + g[i] * Float(1 - c.beta1)
                        n2[i] = prev2[i] * b2 + Float(1 - c.beta2) * g[i] * g[i]
                    case .momentum: n1[i] = t == 1 ? g[i] : prev1[i] * b1 + g[i]
                    case .lion: n1[i] = prev1[i] * b2 + g[i] * Float(1 - c.beta2)
                    case .rmsprop: n1[i] = prev1[i] * b1 + Float(1 - c.beta1) * g[i] * g[i]
                    case .adagrad: n1[i] = prev1[i] + g[i] * g[i]
                    }
                }
                let square1 = kind == .rmsprop || kind == .adagrad
                let r1 = Blockwise8Reference.quantizeState(n1, code: QuantMap.signedDynamic, blocksize: 256, floorPositive: square1)
                XCTAssertEqual(saved.state1, r1.q, "\(kind.name) step \(t): state1 codes")
                XCTAssertEqual(saved.absmax1!, r1.absmax, "\(kind.name) step \(t): absmax1")
                prev1 = Blockwise8Reference.dequantize(saved.state1, absmax: saved.absmax1!, code: QuantMap.signedDynamic, blocksize: 256)
                if kind.stateCount == 2 {
                    let r2 = Blockwise8Reference.quantizeState(n2, code: QuantMap.unsignedDynamic, blocksize: 256, floorPositive: true)
                    XCTAssertEqual(saved.state2!, r2.q, "\(kind.name) step \(t): state2 codes")
                    XCTAssertEqual(saved.absmax2!, r2.absmax, "\(kind.name) step \(t): absmax2")
                    prev2 = Blockwise8Reference.dequantize(saved.state2!, absmax: saved.absmax2!, code: QuantMap.unsignedDynamic, blocksize: 256)
                    let raised = (0..<p.numel).filter { n2[$0] > 0 && r2.q[$0] == 1 }.count
                    let exact = Blockwise8Reference.quantize(n2, code: QuantMap.unsignedDynamic, blocksize: 256).q
                    if t == 6 { XCTAssertGreaterThan(raised - (0..<p.numel).filter { exact[$0] == 1 }.count, 0, "the floor was never exercised") }
                }
                for i in 0..<p.numel where square1 || kind.stateCount == 2 {
                    let v = kind.stateCount == 2 ? n2[i] : n1[i], q = kind.stateCount == 2 ? saved.state2![i] : saved.state1[i]
                    if v > 0 { XCTAssertNotEqual(q, kind.stateCount == 2 ? 0 : 127, "\(kind.name) step \(t) element \(i)") }
                }
            }
        }
    }

    func testMinEightBitSizeAndLayerOverride() throws {
        let e = try Embedding(EmbeddingConfig(numEmbeddings: 100, embeddingDim: 100), stable: true, seed: 1)
        let opt = try Optimizer(OptimizerConfig.defaults(.adam, optimBits: 8), params: e.parameters)
        XCTAssertEqual(opt.bits(for: 0), 32)  // the layer marked its weight optim_bits = 32
        XCTAssertEqual(opt.bits(for: 1), 32)  // below min_8bit_size
        e.weight.clearOverride(.optimBits)
        XCTAssertEqual(opt.bits(for: 0), 8)
    }

    /// Upstream keys overrides by (group, index) in a singleton: an override
    /// on one optimizer's first parameter leaks onto the next optimizer's
    /// first parameter. Here overrides live on the parameter.
    func testOverridesDoNotLeak() throws {
        let (_, a) = try param(100, 100, seed: 1)
        let (_, b) = try param(100, 100, seed: 2)
        try a.setOverride(.optimBits, 32)
        try a.setOverride(.lr, 0.5)
        let oa = try Optimizer(OptimizerConfig.defaults(.adam, optimBits: 8), params: [a])
        let ob = try Optimizer(OptimizerConfig.defaults(.adam, optimBits: 8), params: [b])
        XCTAssertEqual(oa.bits(for: 0), 32)
        XCTAssertEqual(oa.config(for: 0).lr, 0.5)
        XCTAssertEqual(ob.bits(for: 0), 8)
        XCTAssertEqual(ob.config(for: 0).lr, 1e-3)
    }

    func testNonFiniteGradientSkipsTheStep() throws {
        let (_, a) = try param(10, 10, seed: 1)
        let (_, b) = try param(10, 10, seed: 2)
        let opt = try Optimizer(OptimizerConfig.defaults(.adam), params: [a, b])
        try setGrad(a, [Float](repeating: 0.1, count: 100))
        var gb = [Float](repeating: 0.1, count: 100); gb[42] = .nan
        try setGrad(b, gb)
        let before = (0..<100).map { a.value($0) }
        XCTAssertThrowsError(try opt.step()) {
            XCTAssertEqual(($0 as! QembedError).status, .nonFinite)
            XCTAssertTrue(($0 as! QembedError).message.contains("[42]"))
        }
        XCTAssertEqual((0..<100).map { a.value($0) }, before)
        XCTAssertNil(opt.states[0])
    }

    /// Everything a step may change: parameter values and every state.
    func snapshot(_ opt: Optimizer) -> [String] {
        opt.params.enumerated().map { i, p in
            let values = (0..<p.numel).map { p.value($0).bitPattern }
            let s = opt.savedState(i)
            return "\(values) \(String(describing: s?.step)) \(String(describing: s?.state1)) \(String(describing: s?.state2)) "
                + "\(String(describing: s?.absmax1?.map(\.bitPattern))) \(String(describing: s?.absmax2?.map(\.bitPattern)))"
        }
    }

    /// A finite gradient whose square overflows float32 (the fuzz_capi
    /// finding optim-state-overflow): the step is refused, nothing changes,
    /// the state still exports and imports, and the next normal step runs.
    func testOverflowingStepIsRefusedAndChangesNothing() throws {
        for (kind, bits) in [(OptimizerKind.adam, 32), (.adam, 8), (.adamw, 8), (.rmsprop, 32), (.rmsprop, 8), (.adagrad, 32), (.adagrad, 8)] {
            let (_, a) = try param(40, 70, seed: 3)
            let (_, b) = try param(40, 70, seed: 4)
            var c = OptimizerConfig.defaults(kind, optimBits: bits); c.min8bitSize = 16
            let opt = try Optimizer(c, params: [a, b])
            let normal = (0..<a.numel).map { Float(Xavier.mix(UInt64($0) &+ 9) >> 40) / Float(1 << 24) - 0.5 }
            try setGrad(a, normal); try setGrad(b, normal)
            try opt.step()
            var huge = normal; huge[1234] = 1e30
            try setGrad(b, huge)
            let before = snapshot(opt)
            XCTAssertThrowsError(try opt.step(), "\(kind.name) \(bits)") {
                XCTAssertEqual(($0 as! QembedError).status, .nonFinite)
                XCTAssertTrue(($0 as! QembedError).message.contains("weight"), ($0 as! QembedError).message)
            }
            XCTAssertEqual(snapshot(opt), before, "\(kind.name) \(bits): a refused step changed something")
            for i in 0..<2 { try opt.load(i, opt.savedState(i)!) }  // export -> import is the identity
            XCTAssertEqual(snapshot(opt), before)
            try setGrad(b, normal)
            try opt.step()
            XCTAssertEqual(opt.savedState(1)!.step, 2)
        }
    }

    /// Refused too: 0/0 (Adam with eps = 0 on zero gradient and state) on the
    /// first step (the fresh state is dropped again), and an f16 parameter
    /// pushed past 65504.
    func testOtherNonFiniteUpdatesAreRefused() throws {
        let (_, p) = try param(8, 8, seed: 1)
        var c = OptimizerConfig.defaults(.adam); c.eps = 0
        let opt = try Optimizer(c, params: [p])
        try setGrad(p, [Float](repeating: 0, count: 64))
        let before = snapshot(opt)
        XCTAssertThrowsError(try opt.step()) { XCTAssertEqual(($0 as! QembedError).status, .nonFinite) }
        XCTAssertEqual(snapshot(opt), before)
        XCTAssertNil(opt.states[0])
        try setGrad(p, [Float](repeating: 0.5, count: 64))
        try opt.step()  // no zero denominators: fine

        let e = try Embedding(EmbeddingConfig(numEmbeddings: 4, embeddingDim: 16, dtype: .f16), seed: 2)
        var m = OptimizerConfig.defaults(.momentum); m.lr = 1e4
        let o16 = try Optimizer(m, params: [e.weight])
        try setGrad(e.weight, [Float](repeating: -1, count: 64))
        try o16.step()  // |p| <= 1e4 + 1: fine
        let before16 = snapshot(o16)
        try setGrad(e.weight, [Float](repeating: -10, count: 64))
        XCTAssertThrowsError(try o16.step()) { XCTAssertEqual(($0 as! QembedError).status, .nonFinite) }
        XCTAssertEqual(snapshot(o16), before16)
    }

    func testSkipZeros() throws {
        let (_, p) = try param(8, 8, seed: 1)
        var c = OptimizerConfig.defaults(.adamw); c.skipZeros = true
        let opt = try Optimizer(c, params: [p])
        var g = [Float](repeating: 0.3, count: 64); g[5] = 0
        let v5 = p.value(5)
        try setGrad(p, g)
        try opt.step()
        XCTAssertEqual(p.value(5), v5)  // not even weight decay
        XCTAssertEqual(opt.states[0]!.state1.floats()[5], 0)
    }

    /// Sparse rows with 8-bit state: only touched rows (and their blocks) change.
    func testSparseEightBitTouchesOnlyItsRows() throws {
        let e = try Embedding(EmbeddingConfig(numEmbeddings: 200, embeddingDim: 300, sparse: true), seed: 5)
        e.weight.clearOverride(.optimBits)
        let opt = try Optimizer(OptimizerConfig.defaults(.adam, optimBits: 8), params: [e.weight])
        let before = (0..<e.weight.numel).map { e.weight.value($0) }
        let idx: [Int64] = [3, 150, 3]
        var rng = Rng(6)
        let g = rng.floats(3 * 300, scale: 0.1)
        try idx.withUnsafeBytes { try e.backward(Indices($0.baseAddress!, dtype: .i64, count: 3), gradOutput: g, gradDtype: .f32) }
        try opt.step()
        let s = opt.states[0]!
        XCTAssertTrue(s.rowAligned)
        XCTAssertEqual(s.blocks, 200 * 2)
        for r in 0..<200 {
            let changed = (0..<300).contains { e.weight.value(r * 300 + $0) != before[r * 300 + $0] }
            XCTAssertEqual(changed, r == 3 || r == 150, "row \(r)")
            let absmaxTouched = s.absmax1!.floats()[2 * r] != 0
            XCTAssertEqual(absmaxTouched, r == 3 || r == 150)
        }
    }

    /// Export after 5 steps, import into a fresh optimizer: the next 5 steps
    /// are identical to an uninterrupted run.
    func testResumeContinuesTheSameTrajectory() throws {
        for bits in [8, 32] {
            let (_, a) = try param(30, 200, seed: 9)
            let (_, b) = try param(30, 200, seed: 9)
            let oa = try Optimizer(OptimizerConfig.defaults(.adamw, optimBits: bits), params: [a])
            var rng = Rng(10)
            let grads = (0..<10).map { _ in rng.floats(a.numel, scale: 0.05) }
            for t in 0..<5 { try setGrad(a, grads[t]); try oa.step() }
            try b.load(a.data.raw, dtype: .f32, count: a.numel)
            let ob = try Optimizer(OptimizerConfig.defaults(.adamw, optimBits: bits), params: [b])
            try ob.load(0, oa.savedState(0)!)
            for t in 5..<10 {
                try setGrad(a, grads[t]); try oa.step()
                try setGrad(b, grads[t]); try ob.step()
            }
            XCTAssertEqual((0..<a.numel).map { a.value($0) }, (0..<b.numel).map { b.value($0) })
            // A state for another shape is refused and changes nothing.
            let (_, c) = try param(10, 10, seed: 1)
            let oc = try Optimizer(OptimizerConfig.defaults(.adamw, optimBits: bits), params: [c])
            XCTAssertThrowsError(try oc.load(0, oa.savedState(0)!))
            XCTAssertNil(oc.states[0])
        }
    }

    func testBadConfigs() {
        var c = OptimizerConfig.defaults(.adam)
        c.lr = -1; XCTAssertThrowsError(try c.validate())
        c = .defaults(.adam); c.beta1 = 1; XCTAssertThrowsError(try c.validate())
        c = .defaults(.adam); c.eps = .nan; XCTAssertThrowsError(try c.validate())
        c = .defaults(.adam); c.optimBits = 16; XCTAssertThrowsError(try c.validate())
        c = .defaults(.momentum); c.beta1 = 0; XCTAssertThrowsError(try c.validate())
    }
}
