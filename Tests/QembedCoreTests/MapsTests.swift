import XCTest
@testable import QembedCore

final class MapsTests: XCTestCase {
    func testSignedDynamicMap() throws {
        let m = try QuantMap.dynamic()
        XCTAssertEqual(m.count, 256)
        XCTAssertEqual(m[127], 0)
        XCTAssertEqual(m[255], 1)
        XCTAssertEqual(m[0], -0.99297, accuracy: 1e-5)
        XCTAssertEqual(m.filter { $0 > 0 }.min()!, 5.5e-7, accuracy: 1e-8)
        XCTAssertEqual(m, m.sorted())
    }

    func testUnsignedDynamicMap() throws {
        let m = try QuantMap.dynamic(signed: false)
        XCTAssertEqual(m[0], 0)
        XCTAssertEqual(m[255], 1)
        XCTAssertEqual(m, m.sorted())
        XCTAssertEqual(Set(m).count, 256)
    }

    func testNF4Levels() throws {
        let expected: [Float] = [-1.0, -0.6961928, -0.5250731, -0.3949175, -0.2844414, -0.1847734,
                                 -0.0910500, 0.0, 0.0795803, 0.1609302, 0.2461123, 0.3379152,
                                 0.4407098, 0.5626170, 0.7229568, 1.0]
        let nf4 = QuantMap.fourBit(.nf4)
        for (a, b) in zip(nf4, expected) { XCTAssertEqual(a, b, accuracy: 1e-7) }
        // The normal map computed without scipy holds the same 16 non-padding levels.
        let normal = try QuantMap.normal()
        let nonzero = normal.filter { $0 != 0 }
        XCTAssertEqual(nonzero.count, 15)
        for (a, b) in zip(nonzero, nf4.filter { $0 != 0 }) { XCTAssertEqual(a, b, accuracy: 2e-7) }
    }

    func testFP4Levels() {
        let expected: [Float] = [0, 0.0052083, 0.6666667, 1, 0.3333333, 0.5, 0.1666667, 0.25]
        let fp4 = QuantMap.fourBit(.fp4)
        for i in 0..<8 {
            XCTAssertEqual(fp4[i], expected[i], accuracy: 1e-7)
            XCTAssertEqual(fp4[i + 8], -expected[i], accuracy: 1e-7)
        }
    }

    func testNormalQuantile() {
        XCTAssertEqual(normalQuantile(0.5), 0, accuracy: 1e-15)
        XCTAssertEqual(normalQuantile(0.975), 1.959963984540054, accuracy: 1e-13)
        XCTAssertEqual(normalQuantile(0.001), -3.090232306167814, accuracy: 1e-12)
    }

    func testBadMapArguments() {
        XCTAssertThrowsError(try QuantMap.dynamic(totalBits: 9))
        XCTAssertThrowsError(try QuantMap.dynamic(maxExponentBits: 0))
        XCTAssertThrowsError(try QuantMap.fp8(exponentBits: 4, precisionBits: 4))
        XCTAssertThrowsError(try QuantMap.normal(offset: 0.4))
        XCTAssertThrowsError(try QuantMap.normal(offset: .nan))
        XCTAssertThrowsError(try QuantMap.linear(totalBits: -1))
        XCTAssertThrowsError(try QuantMap.dynamic(signed: false, maxExponentBits: 8, totalBits: 8))
        XCTAssertThrowsError(try QuantMap.fp8(signed: false, exponentBits: 8, precisionBits: 0, totalBits: 8))  // NaN upstream
    }

    /// What bitsandbytes accepts beyond the usual ranges (the full table is
    /// bindings/python/tests/test_map_edges.py against its golden answers).
    func testMapEdgesBitsandbytesAccepts() throws {
        XCTAssertEqual(try QuantMap.dynamic(maxExponentBits: 8, totalBits: 8), try QuantMap.dynamic(maxExponentBits: 7, totalBits: 8))
        XCTAssertEqual(try QuantMap.dynamic(maxExponentBits: 1, totalBits: 1).filter { $0 != 0 }, [1])
        XCTAssertEqual(try QuantMap.linear(totalBits: 0), [Float](repeating: 0, count: 256))
        let fp = try QuantMap.fp8(signed: false, exponentBits: 0, precisionBits: 2, totalBits: 2)
        XCTAssertEqual(fp.filter { $0 != 0 }, [Float(0.33333334), 0.6666667, 1])  // bitsandbytes 0.50.2
    }
}
