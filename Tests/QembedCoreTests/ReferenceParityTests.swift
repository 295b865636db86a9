import XCTest
@testable import QembedCore

/// The optimized kernels must equal the scalar reference byte for byte.
final class ReferenceParityTests: XCTestCase {
    let dtypes: [DType] = [.f32, .f16, .bf16]

    func quantize8(_ x: [Float], _ dtype: DType, code: [Float], blocksize: Int) throws -> ([UInt8], [Float]) {
        let (_, bytes) = storage(x, dtype)
        var q = [UInt8](repeating: 0xAB, count: x.count)
        var am = [Float](repeating: -1, count: ceilDiv(x.count, blocksize))
        let search = CodeSearch(code: code)
        try bytes.withUnsafeBytes { src in
            try Blockwise8.quantize(src.baseAddress!, dtype: dtype, n: x.count, search: search,
                                    blocksize: blocksize, out: &q, absmax: &am)
        }
        return (q, am)
    }

    func checkBlockwise(_ x: [Float], code: [Float], blocksize: Int, file: StaticString = #filePath, line: UInt = #line) throws {
        for dtype in dtypes {
            let values = storage(x, dtype).values
            let ref = Blockwise8Reference.quantize(values, code: code, blocksize: blocksize)
            let (q, am) = try quantize8(x, dtype, code: code, blocksize: blocksize)
            XCTAssertEqual(am, ref.absmax, "absmax \(dtype) n=\(x.count) bs=\(blocksize)", file: file, line: line)
            if q != ref.q {
                let i = zip(q, ref.q).enumerated().first { $0.element.0 != $0.element.1 }!.offset
                XCTFail("codes differ \(dtype) n=\(x.count) bs=\(blocksize) at \(i): x=\(values[i]) got \(q[i]) want \(ref.q[i])", file: file, line: line)
            }
            // Dequantize: code[q] * absmax to the bit, in every output dtype.
            let want = Blockwise8Reference.dequantize(q, absmax: am, code: code, blocksize: blocksize)
            var out = [Float](repeating: .nan, count: x.count)
            try code.withUnsafeBufferPointer { c in
                try Blockwise8.dequantize(q, n: x.count, absmax: am, code: c.baseAddress!, blocksize: blocksize, out: &out, dtype: .f32)
            }
            XCTAssertEqual(out.map(\.bitPattern), want.map(\.bitPattern), file: file, line: line)
            var half = [UInt16](repeating: 0, count: x.count)
            try code.withUnsafeBufferPointer { c in
                try Blockwise8.dequantize(q, n: x.count, absmax: am, code: c.baseAddress!, blocksize: blocksize, out: &half, dtype: .bf16)
            }
            XCTAssertEqual(half, want.map(floatToBF16), file: file, line: line)
        }
    }

    func testBlockwiseRandom() throws {
        var rng = Rng(1)
        for bs in [64, 128, 256, 1000, 4096] {
            for n in [1, 2, 3, 7, bs - 1, bs, bs + 1, 3 * bs + 17] where n >= 1 {
                for scale: Float in [1e-3, 1, 50] {
                    try checkBlockwise(rng.floats(n, scale: scale), code: QuantMap.signedDynamic, blocksize: bs)
                }
            }
        }
    }

    func testBlockwiseEdgeCases() throws {
        for bs in [64, 256] {
            for x in edgeCases(code: QuantMap.signedDynamic, blocksize: bs) {
                try checkBlockwise(x, code: QuantMap.signedDynamic, blocksize: bs)
            }
        }
    }

    func testMidpointsTakeTheLowerIndex() throws {
        let code = QuantMap.signedDynamic
        var x: [Float] = [1]
        for i in 0..<255 { x.append((code[i] + code[i + 1]) / 2) }
        let (q, _) = try quantize8(x, .f32, code: code, blocksize: 256)
        for i in 0..<255 { XCTAssertEqual(q[i + 1], UInt8(i), "midpoint \(i)") }
    }

    func testCallerCodes() throws {
        var rng = Rng(2)
        // Unsigned dynamic map on signed data (values below 0 clamp to code[0]).
        try checkBlockwise(rng.floats(777, scale: 3), code: QuantMap.unsignedDynamic, blocksize: 64)
        // The linear map holds two zeros: buckets with several midpoints (span > 1 path).
        let linear = try QuantMap.linear()
        XCTAssertGreaterThan(CodeSearch(code: linear).span, 0)
        try checkBlockwise(rng.floats(1500, scale: 1), code: linear, blocksize: 256)
        // A code with clustered entries forces span > 1.
        var clustered = (0..<256).map { Float($0 - 128) / 128 }
        for i in 100..<140 { clustered[i] = 0.5 + Float(i - 100) * 1e-4 }
        clustered.sort()
        XCTAssertGreaterThan(CodeSearch(code: clustered).span, 1)
        try checkBlockwise(rng.floats(2000, scale: 1e-3).map { $0 + 0.502 } + rng.floats(100, scale: 1), code: clustered, blocksize: 128)
    }

    /// The L1-sized table equals the rule on every midpoint and its float
    /// neighbours, every bucket edge, tiny, signed-zero and random values.
    func testCompactTableEqualsTheRule() throws {
        let codes: [(String, [Float], Bool)] = [("signed dynamic", QuantMap.signedDynamic, true),
                                                ("unsigned dynamic", QuantMap.unsignedDynamic, true),
                                                ("linear (a midpoint at 0)", try QuantMap.linear(), false)]
        var rng = Rng(7)
        for (name, code, expected) in codes {
            let search = CodeSearch(code: code)
            XCTAssertEqual(search.compact != nil, expected, name)
            guard let t = search.compact else { continue }
            XCTAssertLessThanOrEqual(t.count * 4, 32 << 10, "\(name): table of \(t.count) entries")
            var xs: [Float] = [0, -0.0, 1, -1, 1.5, -1.5, .infinity, -.infinity, 1e-30, -1e-30, .leastNonzeroMagnitude, -.leastNonzeroMagnitude]
            for i in 0..<255 {
                let m = (code[i] + code[i + 1]) / 2 + 0
                xs += [m, m.nextUp, m.nextDown]
            }
            for ub in 0..<t.u {
                let lo = t.a0 + (ub << t.shift), hi = min(lo + t.mask, t.a0 + t.span)
                for b in [lo, hi, lo &- 1, hi + 1] { xs += [Float(bitPattern: b), -Float(bitPattern: b)] }
            }
            xs += rng.floats(20000, scale: 1) + rng.floats(2000, scale: 1e-4) + rng.floats(2000, scale: 1e-7)
            while xs.count % 8 != 0 { xs.append(0.25) }
            code.withUnsafeBufferPointer { c in
                for j in stride(from: 0, to: xs.count, by: 8) {
                    let v = SIMD8<Float>(xs[j..<j + 8])
                    let got = t.index8(v)
                    for l in 0..<8 {
                        let want = Blockwise8Reference.index(min(max(v[l], -1), 1), code: c.baseAddress!)
                        if got[l] != UInt32(want) { XCTFail("\(name): s = \(v[l]) (bits \(String(v[l].bitPattern, radix: 16))) got \(got[l]) want \(want)"); return }
                    }
                }
            }
            let nan = t.index8(SIMD8(repeating: .nan))  // in range, whatever it is
            XCTAssertTrue(nan.max() < 256)
        }
    }

    func check4bit(_ x: [Float], blocksize: Int, type: FourBitType, file: StaticString = #filePath, line: UInt = #line) throws {
        for dtype in dtypes {
            let (values, bytes) = storage(x, dtype)
            let ref = FourBitReference.quantize(values, blocksize: blocksize, type: type)
            var packed = [UInt8](repeating: 0xAB, count: FourBit.packedBytes(x.count))
            var am = [Float](repeating: -1, count: ceilDiv(x.count, blocksize))
            try bytes.withUnsafeBytes { src in
                try FourBit.quantize(src.baseAddress!, dtype: dtype, n: x.count, blocksize: blocksize, type: type, packed: &packed, absmax: &am)
            }
            XCTAssertEqual(am, ref.absmax, file: file, line: line)
            XCTAssertEqual(packed, ref.packed, "\(type.name) \(dtype) n=\(x.count) bs=\(blocksize)", file: file, line: line)
            var out = [Float](repeating: .nan, count: x.count)
            try FourBit.dequantize(packed, n: x.count, absmax: am, blocksize: blocksize, type: type, out: &out, dtype: .f32)
            let code = QuantMap.fourBit(type)
            for i in 0..<x.count {
                let nib = i % 2 == 0 ? packed[i / 2] >> 4 : packed[i / 2] & 15
                XCTAssertEqual(out[i].bitPattern, (code[Int(nib)] * am[i / blocksize]).bitPattern, file: file, line: line)
            }
        }
    }

    func testFourBitRandom() throws {
        var rng = Rng(3)
        for type in FourBitType.allCases {
            for bs in [32, 64, 128, 256, 512, 1024, 2048, 4096] {
                for n in [1, 2, 3, 9, bs - 1, bs, bs + 1, 5 * bs + 3] {
                    try check4bit(rng.floats(n, scale: [1e-3, 1, 50][n % 3]), blocksize: bs, type: type)
                }
            }
        }
    }

    func testFourBitEdgeCases() throws {
        for type in FourBitType.allCases {
            let lv = FourBit.levels(type)
            var onMids: [Float] = [1]
            for _ in 0..<4 { onMids += lv.sortedMids }
            try check4bit(onMids + [-1], blocksize: 64, type: type)
            for x in edgeCases(code: QuantMap.signedDynamic, blocksize: 64) { try check4bit(x, blocksize: 64, type: type) }
        }
    }

    /// NaN/Inf anywhere is refused with QEMBED_ERR_NON_FINITE naming the
    /// first one (the outputs are unspecified then: the kernels stream once).
    func testNonFiniteIsRejectedNamingTheFirst() throws {
        for bad: Float in [.nan, .infinity, -.infinity] {
            var rng = Rng(4)
            var x = rng.floats(30_000, scale: 1)
            x[21_700] = bad
            x[29_000] = .nan
            func check(_ f: () throws -> Void) {
                XCTAssertThrowsError(try f()) {
                    let e = $0 as! QembedError
                    XCTAssertEqual(e.status, .nonFinite)
                    XCTAssertTrue(e.message.contains("A[21700]"), e.message)
                }
            }
            var q = [UInt8](repeating: 7, count: x.count)
            var am = [Float](repeating: 9, count: x.count / 64 + 1)
            check { try Blockwise8.quantize(x, dtype: .f32, n: x.count, search: .signedDynamic, blocksize: 64, out: &q, absmax: &am) }
            var packed = [UInt8](repeating: 7, count: x.count / 2)
            check { try FourBit.quantize(x, dtype: .f32, n: x.count, blocksize: 64, type: .nf4, packed: &packed, absmax: &am) }
            var i8 = [Int8](repeating: 7, count: x.count)
            for threshold: Float in [0, 2] {
                check { try Int8Rowwise.quantize(x, dtype: .f32, rows: 300, cols: 100, threshold: threshold, out: &i8, rowStats: &am) }
            }
        }
    }
}
