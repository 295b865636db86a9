import XCTest
import CQembedSIMD
@testable import QembedCore

/// The AVX-512 and AVX2 LoRA lookups (qembed_lora.h: base row and update
/// in registers, each row stored once) against the portable tiled path, bit
/// for bit, over float, int8 and 4-bit bases, ranks 1-8, int32 and int64
/// ids, rows shorter and longer than the AVX2 kernel's 256-column slice.
final class LoraTests: XCTestCase {
    func testFusedLookupEqualsThePortablePath() throws {
        guard qembed__avx512_enabled() != 0 else { throw XCTSkip("no AVX-512 here (or QEMBED_CPU forces a lower tier)") }
        defer { qembed__avx512_set_enabled(1) }
        try checkFused(on: { qembed__avx512_set_enabled(1) }, off: { qembed__avx512_set_enabled(0) })
    }

    func testAVX2FusedLookupEqualsThePortablePath() throws {
        qembed__avx512_set_enabled(0)
        defer { qembed__avx512_set_enabled(1); qembed__avx2_set_enabled(1) }
        guard qembed__avx2_enabled() != 0 else { throw XCTSkip("no AVX2 here (or QEMBED_CPU=baseline)") }
        var probe = qembed__bag_rows(kind: Int32(QEMBED__BAG_F32), dim: 64, data: UnsafeRawPointer(bitPattern: 64)!, scales: nil)
        let z = [Float](repeating: 0, count: 8 * 64), ids: [Int64] = [0]
        var out = [Float](repeating: 0, count: 64)
        XCTAssertEqual(qembed__lora256_forward(&probe, ids, 1, 0, z, 8, z, 1, &out), 1, "the AVX2 kernel takes float rows of 64 (no FMA?)")
        try checkFused(on: { qembed__avx2_set_enabled(1) }, off: { qembed__avx2_set_enabled(0) })
    }

    func checkFused(on: () -> Void, off: () -> Void) throws {
        for dim in [64, 48, 528] {
            var rng = Rng(UInt64(dim))
            let rows = 157
            var w: [Float] = []
            for r in 0..<rows { w += rng.floats(dim, scale: Float(pow(10.0, Double(r % 5) - 2))) }
            let e = try w.withUnsafeBytes { try Embedding(EmbeddingConfig(numEmbeddings: rows, embeddingDim: dim), pretrained: $0.baseAddress!) }
            let bases: [(String, LoraBase)] = [
                ("f32", .float(e)),
                ("int8", .quantized(try QuantizedEmbedding.from(e, kind: .int8))),
                ("nf4", .quantized(try QuantizedEmbedding.from(e, kind: .nf4, blocksize: 64))),
                ("fp4 nested", .quantized(try QuantizedEmbedding.from(e, kind: .fp4, blocksize: 32, compressStatistics: true)))]
            let ids64 = (0..<101).map { _ in Int64(rng.next() % UInt64(rows)) }
            let ids32 = ids64.map { Int32($0) }
            for (name, base) in bases {
                for r in [1, 5, 8] {
                    let lora = try LoraEmbedding(base: base, r: r, alpha: 16, useRslora: false, seed: 3)
                    let a = lora.aT.data.floats()
                    for i in 0..<lora.aT.numel { a[i] = rng.normal() }  // A starts at zero: give it values
                    for is64 in [true, false] {
                        func run() throws -> [Float] {
                            var out = [Float](repeating: .nan, count: ids64.count * dim)
                            try ids64.withUnsafeBytes { i64 in
                                try ids32.withUnsafeBytes { i32 in
                                    let ind = is64 ? try Indices(i64.baseAddress!, dtype: .i64, count: ids64.count)
                                                   : try Indices(i32.baseAddress!, dtype: .i32, count: ids32.count)
                                    try out.withUnsafeMutableBytes { try lora.forward(ind, out: $0.baseAddress!, outDtype: .f32) }
                                }
                            }
                            return out
                        }
                        let fast = try run()
                        off()
                        let slow = try run()
                        on()
                        XCTAssertEqual(fast.map(\.bitPattern), slow.map(\.bitPattern), "\(name) dim \(dim) r \(r) i64 \(is64)")
                    }
                }
            }
        }
    }
}
