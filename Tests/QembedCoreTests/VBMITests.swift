import XCTest
@testable import QembedCore

/// The AVX-512 VBMI kernels against the portable paths, on CPUs that have
/// them (elsewhere tools/vbmi_check.c proves them through SIMDe, in make test).
/// The reference parity suites run through them too where they are enabled.
final class VBMITests: XCTestCase {
    override func setUpWithError() throws {
        try XCTSkipUnless(VBMI.available, "this CPU has no AVX-512 VBMI (make test-vbmi checks the kernels emulated)")
    }
    override func tearDown() { VBMI.setEnabled(true) }

    /// Values over many orders of magnitude, with zero and constant blocks.
    func data(_ n: Int, seed: UInt64) -> [Float] {
        var rng = Rng(seed)
        var x = (0..<n).map { _ in rng.normal() * Float(pow(10.0, -8.0 + 9.0 * Double(rng.uniform()))) }
        for i in 0..<min(n, 512) { x[i] = 0 }
        for i in 512..<min(n, 768) { x[i] = -3.25 }
        return x
    }

    func both<T: Equatable>(_ f: () throws -> T) rethrows -> (T, T) {
        VBMI.setEnabled(false)
        let portable = try f()
        VBMI.setEnabled(true)
        return (portable, try f())
    }

    func testBlockwiseQuantizeAndDequantizeEqualThePortablePath() throws {
        for dtype in [DType.f32, .f16, .bf16] {
            for blocksize in [64, 256, 4096] {
                let n = 100_003
                let bytes = storage(data(n, seed: UInt64(blocksize)), dtype).bytes
                for code in [QuantMap.signedDynamic, QuantMap.unsignedDynamic] {
                    let search = CodeSearch(code: code)
                    let (a, b) = try both { () throws -> [UInt8] in
                        var q = [UInt8](repeating: 0, count: n)
                        var absmax = [Float](repeating: 0, count: (n + blocksize - 1) / blocksize)
                        try bytes.withUnsafeBytes { src in
                            try Blockwise8.quantize(src.baseAddress!, dtype: dtype, n: n, search: search, blocksize: blocksize,
                                                    out: &q, absmax: &absmax)
                        }
                        return q
                    }
                    XCTAssertEqual(a, b, "\(dtype) blocksize \(blocksize): codes")
                    let absmax = (0..<(n + blocksize - 1) / blocksize).map { Float($0 % 7) * 0.37 + 1e-3 }
                    let (d0, d1) = both { () -> [UInt8] in
                        var out = [UInt8](repeating: 0, count: n * dtype.size)
                        code.withUnsafeBufferPointer { c in
                            out.withUnsafeMutableBytes { o in
                                try? Blockwise8.dequantize(a, n: n, absmax: absmax, code: c.baseAddress!, blocksize: blocksize,
                                                           out: o.baseAddress!, dtype: dtype)
                            }
                        }
                        return out
                    }
                    XCTAssertEqual(d0, d1, "\(dtype) blocksize \(blocksize): dequantized")
                }
            }
        }
    }

    /// Every 8-bit rule, dense and sparse, with and without weight decay and
    /// skip_zeros, on rows of 97 (blocks that end mid-vector), gradients over
    /// six orders of magnitude, exact zeros, and one row of subnormal
    /// gradients (a subnormal absmax: the fused Adam kernel's fallback), for
    /// float32, float16 and bfloat16 parameters (the kernels work on widened
    /// copies of the latter two).
    func testEightBitStepsEqualThePortablePath() throws {
        for kind in OptimizerKind.allCases {
            for (sparse, dtype) in [(false, DType.f32), (true, .f32), (false, .f16), (true, .bf16), (false, .bf16)] {
                for (wd, skip) in [(0.0, false), (0.01, true)] {
                    let (s0, s1) = try both { () throws -> [UInt8] in
                        let dim = 97
                        let e = try Embedding(EmbeddingConfig(numEmbeddings: 300, embeddingDim: dim, sparse: sparse, dtype: dtype), seed: 5)
                        e.weight.clearOverride(.optimBits)
                        var c = OptimizerConfig.defaults(kind, optimBits: 8)
                        c.min8bitSize = 1
                        c.weightDecay = wd
                        c.skipZeros = skip
                        if kind == .momentum { c.beta1 = 0.9 }
                        let opt = try Optimizer(c, params: [e.weight])
                        var rng = Rng(6)
                        for _ in 0..<5 {
                            e.zeroGrad()
                            var ids: [Int64] = [7]
                            for _ in 0..<40 { ids.append(Int64(rng.next() % 300)) }
                            var g = (0..<ids.count * dim).map { _ in rng.normal() * Float(pow(10.0, -6.0 + 6.0 * Double(rng.uniform()))) }
                            for j in 0..<dim { g[j] = Float(bitPattern: 0x0000_1000 + UInt32(j)) }  // row 7: subnormal
                            for j in stride(from: dim, to: g.count, by: 5) { g[j] = 0 }
                            try ids.withUnsafeBytes { try e.backward(Indices($0.baseAddress!, dtype: .i64, count: ids.count), gradOutput: g, gradDtype: .f32) }
                            try opt.step()
                        }
                        let st = opt.savedState(0)!
                        func bytes(_ f: [Float]?) -> [UInt8] { (f ?? []).flatMap { withUnsafeBytes(of: $0.bitPattern) { Array($0) } } }
                        return (0..<e.weight.numel).flatMap { withUnsafeBytes(of: e.weight.value($0).bitPattern) { Array($0) } }
                            + st.state1 + (st.state2 ?? []) + bytes(st.absmax1) + bytes(st.absmax2)
                    }
                    let differ = (0..<min(s0.count, s1.count)).filter { s0[$0] != s1[$0] }
                    XCTAssertTrue(s0.count == s1.count && differ.isEmpty,
                                  "\(kind.name) \(dtype) sparse=\(sparse) wd=\(wd) skip_zeros=\(skip): \(differ.count) of \(s0.count) bytes "
                                  + "of weights, states and absmax differ, first at \(differ.first ?? -1)")
                }
            }
        }
    }
}
