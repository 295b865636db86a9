import XCTest
@testable import QembedCore

/// Standalone parameters (owning or wrapping caller memory) and gradients
/// set from outside: the optimizers step them exactly as they step a layer's.
final class StandaloneParameterTests: XCTestCase {
    /// A wrapped f32 buffer and an owned copy of the same values, given the
    /// same gradients (wrapped vs copied; magnitudes from 1e-7 to 40), end
    /// bit-identical after 8-bit AdamW steps, the wrapped one's new values in
    /// the caller's memory.
    func testWrappedAndOwnedTrajectoriesAreIdentical() throws {
        let n = 3 * 4096 + 77
        var rng = Rng(5)
        let start = rng.floats(n, scale: 1)
        var gs = (0..<4).map { _ in rng.floats(n, scale: 0.01) }
        for k in gs.indices { gs[k][k] = 3e-7; gs[k][n - 1 - k] = 40 }
        var c = OptimizerConfig.defaults(.adamw, optimBits: 8)
        c.lr = 0.003; c.weightDecay = 0.01
        var caller = start
        let own = try Parameter.standalone(name: "o", dtype: .f32, shape: [n])
        try start.withUnsafeBytes { try own.load($0.baseAddress!, dtype: .f32, count: n) }
        let o2 = try Optimizer(c, params: [own])
        try caller.withUnsafeMutableBytes { buf in
            let w = try Parameter.standalone(name: "w", dtype: .f32, shape: [n], wrapping: buf.baseAddress!)
            let o1 = try Optimizer(c, params: [w])
            for g in gs {
                var g = g
                try g.withUnsafeMutableBufferPointer { try w.wrapGrad($0.baseAddress!, count: n) ; try o1.step() }
                try g.withUnsafeBytes { try own.setGrad(copying: $0.baseAddress!, dtype: .f32, count: n) }
                try o2.step()
            }
        }
        XCTAssertEqual(o2.states[0]?.bits, 8)
        XCTAssertNotEqual(caller, start)
        for i in 0..<n { XCTAssertEqual(caller[i].bitPattern, own.value(i).bitPattern, "element \(i)") }
    }

    func testValidation() throws {
        XCTAssertThrowsError(try Parameter.standalone(name: "p", dtype: .f32, shape: [])) { XCTAssertEqual(($0 as? QembedError)?.status, .shape) }
        XCTAssertThrowsError(try Parameter.standalone(name: "p", dtype: .f32, shape: [3, 0])) { XCTAssertEqual(($0 as? QembedError)?.status, .shape) }
        XCTAssertThrowsError(try Parameter.standalone(name: "p", dtype: .u8, shape: [3])) { XCTAssertEqual(($0 as? QembedError)?.status, .unsupported) }
        var buf = [UInt8](repeating: 0, count: 64)
        try buf.withUnsafeMutableBytes { b in
            XCTAssertThrowsError(try Parameter.standalone(name: "p", dtype: .f32, shape: [4], wrapping: b.baseAddress! + 1)) {
                XCTAssertEqual(($0 as? QembedError)?.status, .invalidArgument)
            }
        }
        let p = try Parameter.standalone(name: "p", dtype: .f16, shape: [4, 3])
        var g: [Float] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, .nan]
        // Non-finite and wrong-size gradients are refused; nothing changes.
        XCTAssertThrowsError(try g.withUnsafeBytes { try p.setGrad(copying: $0.baseAddress!, dtype: .f32, count: 12) }) {
            XCTAssertEqual(($0 as? QembedError)?.status, .nonFinite)
        }
        XCTAssertNil(p.grad)
        XCTAssertThrowsError(try g.withUnsafeBytes { try p.setGrad(copying: $0.baseAddress!, dtype: .f32, count: 11) }) {
            XCTAssertEqual(($0 as? QembedError)?.status, .shape)
        }
        g[11] = 12
        try g.withUnsafeBytes { try p.setGrad(copying: $0.baseAddress!, dtype: .f32, count: 12) }
        XCTAssertEqual(p.grad!.floats()[11], 12)
        // A non-finite wrapped gradient is refused at the step, with nothing changed.
        var bad = g
        bad[3] = .infinity
        let before = (0..<12).map { p.value($0) }
        let opt = try Optimizer(.defaults(.adam), params: [p])
        try bad.withUnsafeMutableBufferPointer { b in
            try p.wrapGrad(b.baseAddress!, count: 12)
            XCTAssertThrowsError(try opt.step()) { XCTAssertEqual(($0 as? QembedError)?.status, .nonFinite) }
        }
        XCTAssertEqual((0..<12).map { p.value($0) }, before)
        XCTAssertNil(opt.states[0])
        // Cleared: the step skips it.
        p.clearGrad()
        XCTAssertNil(p.grad)
        try opt.step()
        XCTAssertEqual((0..<12).map { p.value($0) }, before)
    }

    /// A gradient buffer the parameter owned stays valid after clearGrad
    /// (it is kept for reuse), so a pointer read before is never dangling.
    func testClearedOwnedGradientIsReused() throws {
        let p = try Parameter.standalone(name: "p", dtype: .f32, shape: [8])
        let g = [Float](repeating: 2, count: 8)
        try g.withUnsafeBytes { try p.setGrad(copying: $0.baseAddress!, dtype: .f32, count: 8) }
        let first = p.grad!.raw
        p.clearGrad()
        XCTAssertNil(p.grad)
        let d = try p.denseGrad()
        XCTAssertEqual(UnsafeMutableRawPointer(d), first)
        XCTAssertEqual(d[3], 0, "a reused buffer starts from zero")
    }

    /// Layer and standalone parameters in one optimizer.
    func testMixedWithLayerParameters() throws {
        let e = try Embedding(EmbeddingConfig(numEmbeddings: 100, embeddingDim: 8), seed: 3)
        let s = try Parameter.standalone(name: "extra", dtype: .bf16, shape: [10, 8])
        let opt = try Optimizer(.defaults(.adam), params: [e.weight, s])
        let g = [Float](repeating: 0.5, count: 80)
        try g.withUnsafeBytes { try s.setGrad(copying: $0.baseAddress!, dtype: .f32, count: 80) }
        try opt.step()
        XCTAssertEqual(s.value(0), -0.001, accuracy: 1e-5)
        XCTAssertNil(opt.states[0], "the layer weight had no gradient")
    }
}
