import Dispatch
import XCTest
@testable import QembedCore

final class EmbeddingTests: XCTestCase {
    func make(_ rows: Int, _ dim: Int, stable: Bool = false, padding: Int? = nil, maxNorm: Double? = nil, normType: Double = 2,
              freq: Bool = false, sparse: Bool = false, dtype: DType = .f32, seed: UInt64 = 1) throws -> Embedding {
        try Embedding(EmbeddingConfig(numEmbeddings: rows, embeddingDim: dim, paddingIdx: padding, maxNorm: maxNorm,
                                      normType: normType, scaleGradByFreq: freq, sparse: sparse, dtype: dtype),
                      stable: stable, seed: seed)
    }

    func weights(_ e: Embedding) -> [Float] { (0..<e.weight.numel).map { e.weight.value($0) } }

    func forward(_ e: Embedding, _ idx: [Int64], dtype: DType = .f32) throws -> [Float] {
        var out = [Float](repeating: .nan, count: idx.count * e.config.embeddingDim)
        try idx.withUnsafeBytes { try e.forward(Indices($0.baseAddress!, dtype: .i64, count: idx.count), out: &out, outDtype: .f32) }
        return out
    }

    func backward(_ e: Embedding, _ idx: [Int64], _ g: [Float]) throws {
        try idx.withUnsafeBytes { try e.backward(Indices($0.baseAddress!, dtype: .i64, count: idx.count), gradOutput: g, gradDtype: .f32) }
    }

    /// Wide rows into outputs at every 4-byte offset from a cache line (the
    /// copy loop of qembed__copy_row, taken for rows of >= 2 KiB into an
    /// unaligned destination), f32 and bf16, with a row length that leaves a tail.
    func testWideRowsIntoUnalignedOutputs() throws {
        for (dtype, dim) in [(DType.f32, 1000), (.f32, 1024), (.bf16, 1040)] {
            let e = try make(40, dim, dtype: dtype, seed: 3)
            let idx: [Int64] = [39, 0, 17, 17, 5, 38]
            let rowBytes = dim * dtype.size
            let raw = UnsafeMutableRawPointer.allocate(byteCount: idx.count * rowBytes + 128, alignment: 64)
            defer { raw.deallocate() }
            for offset in stride(from: 0, through: 64, by: 4) {
                raw.initializeMemory(as: UInt8.self, repeating: 0xA5, count: idx.count * rowBytes + 128)
                try idx.withUnsafeBytes { try e.forward(Indices($0.baseAddress!, dtype: .i64, count: idx.count), out: raw + offset, outDtype: dtype) }
                for (k, i) in idx.enumerated() {
                    XCTAssertEqual(memcmp(raw + offset + k * rowBytes, e.weight.data.raw + Int(i) * rowBytes, rowBytes), 0,
                                   "\(dtype) dim \(dim) offset \(offset) row \(k)")
                }
                let before = UnsafeRawBufferPointer(start: raw, count: offset), after = UnsafeRawBufferPointer(start: raw + offset + idx.count * rowBytes, count: 128 - offset)
                XCTAssertTrue(before.allSatisfy { $0 == 0xA5 } && after.allSatisfy { $0 == 0xA5 }, "wrote outside the output at offset \(offset)")
            }
        }
    }

    func testXavierBoundsDeterminismAndPadding() throws {
        let e = try make(1000, 64, padding: -3, seed: 7)
        let w = weights(e)
        let a = Float((6.0 / 1064.0).squareRoot())
        XCTAssertLessThanOrEqual(w.map(abs).max()!, a)
        XCTAssertGreaterThan(w.map(abs).max()!, a * 0.99)
        XCTAssertEqual(Array(w[(997 * 64)..<(998 * 64)]), [Float](repeating: 0, count: 64))
        let mean = w.reduce(0, +) / Float(w.count)
        XCTAssertEqual(mean, 0, accuracy: 0.01 * a)
        XCTAssertEqual(weights(try make(1000, 64, padding: -3, seed: 7)), w)
        XCTAssertNotEqual(weights(try make(1000, 64, padding: -3, seed: 8)), w)
        XCTAssertEqual(e.weight.overrides[.optimBits], 32)
    }

    func testLookupIsExact() throws {
        let e = try make(50, 7)
        let w = weights(e)
        let idx: [Int64] = [3, 49, 0, 3, 17]
        let out = try forward(e, idx)
        for (k, i) in idx.enumerated() { XCTAssertEqual(Array(out[(k * 7)..<(k * 7 + 7)]), Array(w[(Int(i) * 7)..<(Int(i) * 7 + 7)])) }
    }

    func testOutOfRangeChangesNothing() throws {
        let e = try make(20, 4, maxNorm: 0.01)
        let before = weights(e)
        XCTAssertThrowsError(try forward(e, [1, 2, 20])) { XCTAssertEqual(($0 as! QembedError).status, .outOfRange) }
        XCTAssertThrowsError(try forward(e, [-1])) { XCTAssertTrue(($0 as! QembedError).message.contains("indices[0] = -1")) }
        XCTAssertEqual(weights(e), before)  // max_norm did not touch rows 1 and 2
        XCTAssertThrowsError(try backward(e, [1, 25], [Float](repeating: 1, count: 8)))
        XCTAssertNil(e.weight.grad)
        XCTAssertThrowsError(try backward(e, [1], [.nan, 0, 0, 0]))
        XCTAssertNil(e.weight.grad)
    }

    func testMaxNormRenormalizesReferencedRows() throws {
        for p in [1.0, 2.0, 3.0] {
            let e = try make(30, 16, maxNorm: 0.1, normType: p)
            let before = weights(e)
            let out = try forward(e, [4, 4, 9])
            let after = weights(e)
            for r in 0..<30 {
                let row = before[(r * 16)..<(r * 16 + 16)].map(Double.init)
                let norm = pow(row.map { pow(abs($0), p) }.reduce(0, +), 1 / p)
                for j in 0..<16 {
                    let want = (r == 4 || r == 9) && norm > 0.1 ? Float(row[j]) * Float(0.1 / (norm + 1e-7)) : Float(row[j])
                    XCTAssertEqual(after[r * 16 + j], want, accuracy: abs(want) * 1e-6)
                }
            }
            XCTAssertEqual(Array(out[0..<16]), Array(after[(4 * 16)..<(5 * 16)]))
        }
    }

    func testDenseBackwardPaddingAndFrequency() throws {
        let e = try make(10, 3, padding: 2, freq: true)
        let idx: [Int64] = [1, 2, 1, 5, 1]
        var rng = Rng(9)
        let g = rng.floats(15, scale: 1)
        try backward(e, idx, g)
        let grad = e.weight.grad!.floats()
        for j in 0..<3 {
            XCTAssertEqual(grad[3 + j], g[j] / 3 + g[6 + j] / 3 + g[12 + j] / 3, accuracy: 1e-6)
            XCTAssertEqual(grad[6 + j], 0)  // padding row
            XCTAssertEqual(grad[15 + j], g[9 + j])
        }
        try backward(e, idx, g)  // accumulates
        XCTAssertEqual(grad[15], 2 * g[9], accuracy: 1e-6)
        e.zeroGrad()
        XCTAssertEqual(grad[15], 0)
    }

    func testSparseEqualsDense() throws {
        let dense = try make(100, 8, padding: 0, freq: true)
        let sparse = try make(100, 8, padding: 0, freq: true, sparse: true)
        var rng = Rng(10)
        for _ in 0..<3 {
            let idx = (0..<40).map { _ in Int64(rng.next() % 30) }
            let g = rng.floats(40 * 8, scale: 1)
            try backward(dense, idx, g)
            try backward(sparse, idx, g)
        }
        let d = dense.weight.grad!.floats()
        XCTAssertNil(sparse.weight.grad)
        XCTAssertEqual(sparse.weight.sparseRows, sparse.weight.sparseRows.sorted())
        XCTAssertFalse(sparse.weight.sparseRows.contains(0))
        for (k, r) in sparse.weight.sparseRows.enumerated() {
            for j in 0..<8 { XCTAssertEqual(sparse.weight.sparseValues[k * 8 + j], d[r * 8 + j], accuracy: 1e-5) }
        }
        let touched = Set(sparse.weight.sparseRows)
        for r in 0..<100 where !touched.contains(r) { for j in 0..<8 { XCTAssertEqual(d[r * 8 + j], 0) } }
    }

    /// StableEmbedding gradients against central finite differences in double.
    func testStableEmbeddingGradients() throws {
        let dim = 6
        let e = try make(5, dim, stable: true)
        let norm = e.norm!
        var rng = Rng(11)
        for j in 0..<dim { norm.weight.data.floats()[j] = 1 + rng.normal() * 0.3; norm.bias.data.floats()[j] = rng.normal() * 0.1 }
        let idx: [Int64] = [1, 3, 1]
        let g = rng.floats(idx.count * dim, scale: 1)
        // Loss = sum(g * y) computed in double from the current parameters.
        func loss() -> Double {
            var l = 0.0
            for (k, i) in idx.enumerated() {
                let x = (0..<dim).map { Double(e.weight.value(Int(i) * dim + $0)) }
                let mean = x.reduce(0, +) / Double(dim)
                let v = x.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(dim)
                for j in 0..<dim {
                    let y = (x[j] - mean) / (v + 1e-5).squareRoot() * Double(norm.weight.data.floats()[j]) + Double(norm.bias.data.floats()[j])
                    l += Double(g[k * dim + j]) * y
                }
            }
            return l
        }
        try backward(e, idx, g)
        func check(_ p: Parameter, _ i: Int, file: StaticString = #filePath, line: UInt = #line) {
            let ptr = p.data.floats()
            let old = ptr[i], h: Float = 1e-2
            ptr[i] = old + h; let lp = loss()
            ptr[i] = old - h; let lm = loss()
            ptr[i] = old
            let numeric = (lp - lm) / (2 * Double(h))
            XCTAssertEqual(Double(p.grad!.floats()[i]), numeric, accuracy: 2e-3 * max(1, abs(numeric)), "\(p.name)[\(i)]", file: file, line: line)
        }
        for i in 0..<(5 * dim) { check(e.weight, i) }
        for j in 0..<dim { check(norm.weight, j); check(norm.bias, j) }
        // Forward: LayerNorm of the rows.
        let out = try forward(e, [3])
        let x = (0..<dim).map { Double(e.weight.value(3 * dim + $0)) }
        let mean = x.reduce(0, +) / Double(dim)
        let v = x.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(dim)
        for j in 0..<dim {
            let y = (x[j] - mean) / (v + 1e-5).squareRoot() * Double(norm.weight.data.floats()[j]) + Double(norm.bias.data.floats()[j])
            XCTAssertEqual(Double(out[j]), y, accuracy: 1e-5 * max(1, abs(y)))
        }
    }

    func testHalfWeights() throws {
        for dtype in [DType.f16, .bf16] {
            let e = try make(40, 5, dtype: dtype)
            let out = try forward(e, [7, 39])
            for j in 0..<5 { XCTAssertEqual(out[j], e.weight.value(35 + j)) }
            XCTAssertEqual(e.weight.data.byteCount, 40 * 5 * 2)
        }
    }

    func testConcurrentForwardsMatchSequential() throws {
        for maxNorm: Double? in [nil, 0.05] {
            let e = try make(5000, 32, stable: maxNorm == nil, maxNorm: maxNorm)
            var rng = Rng(12)
            let batches = (0..<8).map { _ in (0..<500).map { _ in Int64(rng.next() % 5000) } }
            if maxNorm != nil { for b in batches { _ = try forward(e, b) } }  // settle the renorm first
            let want = try batches.map { try forward(e, $0) }
            var got = [[Float]](repeating: [], count: 8)
            let lock = NSLockish()
            DispatchQueue.concurrentPerform(iterations: 8) { t in
                let r = try! self.forward(e, batches[t])
                lock.run { got[t] = r }
            }
            XCTAssertEqual(got, want)
        }
    }
}

/// A minimal mutex for collecting test results.
final class NSLockish: @unchecked Sendable {
    let l = RWLock()
    func run(_ body: () -> Void) { l.withExclusive { body() } }
}
