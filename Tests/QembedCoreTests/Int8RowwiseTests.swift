import XCTest
@testable import QembedCore

final class Int8RowwiseTests: XCTestCase {
    func reference(_ a: [Float], rows: Int, cols: Int, threshold: Float) -> ([Int8], [Float], [Int32]) {
        let r = Int8RowwiseReference.quantize(a, rows: rows, cols: cols, threshold: threshold)
        return (r.q, r.rowStats, r.outlierCols)
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
                XCTAssertEqual(d, Int8RowwiseReference.dequantize(q, rows: rows, cols: cols, rowStats: st))
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

    /// Values over many orders of magnitude, f16 and bf16 inputs, rows whose
    /// maximum is subnormal (the overflowing scale takes the division path),
    /// outliers in a few columns: equal to the scalar reference.
    func testEqualsTheScalarReference() throws {
        var rng = Rng(9)
        let rows = 96, cols = 200
        for dtype in [DType.f32, .f16, .bf16] {
            for threshold: Float in [0, 6] {
                var a = (0..<rows * cols).map { _ in rng.normal() * Float(pow(10.0, -6.0 + 6.0 * Double(rng.uniform()))) }
                for c in [3, 77, 150] { a[5 * cols + c] = 9.5; a[40 * cols + c] = -20 }
                for c in 0..<cols { a[7 * cols + c] = Float(bitPattern: UInt32(c + 1)) }  // subnormal row
                for c in 0..<cols { a[8 * cols + c] = 0 }
                let (vals, bytes) = storage(a, dtype)
                var q = [Int8](repeating: 0, count: a.count), st = [Float](repeating: 0, count: rows)
                let oc = try bytes.withUnsafeBytes { b in
                    try Int8Rowwise.quantize(b.baseAddress!, dtype: dtype, rows: rows, cols: cols, threshold: threshold, out: &q, rowStats: &st)
                }
                let ref = Int8RowwiseReference.quantize(vals, rows: rows, cols: cols, threshold: threshold)
                XCTAssertEqual(q, ref.q, "\(dtype) threshold \(threshold)")
                XCTAssertEqual(st, ref.rowStats, "\(dtype) threshold \(threshold)")
                XCTAssertEqual(oc, ref.outlierCols, "\(dtype) threshold \(threshold)")
            }
        }
    }
}
