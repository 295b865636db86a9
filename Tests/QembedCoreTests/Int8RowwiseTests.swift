import XCTest
@testable import QembedCore

final class Int8RowwiseTests: XCTestCase {
    /// Plain-loop statement of the rule.
    func reference(_ a: [Float], rows: Int, cols: Int, threshold: Float) -> ([Int8], [Float], [Int32]) {
        var outlier = [Bool](repeating: false, count: cols)
        if threshold > 0 { for i in a.indices where abs(a[i]) >= threshold { outlier[i % cols] = true } }
        var stats = [Float](repeating: 0, count: rows)
        var q = [Int8](repeating: 0, count: a.count)
        for r in 0..<rows {
            for c in 0..<cols where threshold == 0 || abs(a[r * cols + c]) < threshold { stats[r] = max(stats[r], abs(a[r * cols + c])) }
            let scale: Float = stats[r] == 0 ? 0 : (1 / stats[r]) * 127
            for c in 0..<cols where !outlier[c] { q[r * cols + c] = Int8((a[r * cols + c] * scale).rounded(.toNearestOrEven)) }
        }
        return (q, stats, (0..<cols).filter { outlier[$0] }.map(Int32.init))
    }

    func testRandomAndThreshold() throws {
        var rng = Rng(5)
        for (rows, cols) in [(1, 1), (1, 300), (300, 1), (17, 129), (64, 1024)] {
            for threshold: Float in [0, 2.5] {
                let a = rng.floats(rows * cols, scale: 1)
                var q = [Int8](repeating: 0, count: a.count), st = [Float](repeating: 0, count: rows)
                let oc = try Int8Rowwise.quantize(a, dtype: .f32, rows: rows, cols: cols, threshold: threshold, out: &q, rowStats: &st)
                let ref = reference(a, rows: rows, cols: cols, threshold: threshold)
                XCTAssertEqual(q, ref.0); XCTAssertEqual(st, ref.1); XCTAssertEqual(oc, ref.2)
                var d = [Float](repeating: 0, count: a.count)
                try Int8Rowwise.dequantize(q, rows: rows, cols: cols, rowStats: st, out: &d, dtype: .f32)
                for i in a.indices { XCTAssertEqual(d[i], Float(q[i]) * st[i / cols] * Int8Rowwise.inv127) }
            }
        }
    }

    func testHalfToEvenTiesAndZeroRow() throws {
        let a: [Float] = [127, 2.5, -3.5, 0.5, -0.5, 1.5, 126.5, -127,  0, 0, 0, 0, 0, 0, 0, 0]
        var q = [Int8](repeating: 1, count: 16), st = [Float](repeating: 1, count: 2)
        try Int8Rowwise.quantize(a, dtype: .f32, rows: 2, cols: 8, threshold: 0, out: &q, rowStats: &st)
        XCTAssertEqual(Array(q[0..<8]), [127, 2, -4, 0, 0, 2, 126, -127])
        XCTAssertEqual(Array(q[8...]), [Int8](repeating: 0, count: 8))
        XCTAssertEqual(st, [127, 0])
    }
}
