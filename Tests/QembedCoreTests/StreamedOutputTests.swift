import CQembedSIMD
import XCTest
@testable import QembedCore

/// Streamed (non-temporal) outputs hold the same values as cached stores,
/// at every alignment, and never touch a byte outside the output.
final class StreamedOutputTests: XCTestCase {
    override func tearDown() {
        StreamedOutput.setMinBytes(StreamedOutput.defaultMinBytes)
        qembed__avx2_set_enabled(1)
    }

    func testStreamStoreCopiesExactlyItsBytes() {
        var rng = Rng(11)
        let src = (0..<1200).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        var bad = 0
        for length in [0, 1, 15, 63, 64, 65, 127, 128, 200, 511, 1024, 1100] {
            for offset in 0..<64 {
                var dst = [UInt8](repeating: 0xC5, count: 1300 + 64)
                dst.withUnsafeMutableBytes { d in
                    src.withUnsafeBytes { s in qembed__stream_store(d.baseAddress! + offset, s.baseAddress!, length) }
                }
                qembed__stream_fence()
                for i in 0..<dst.count {
                    let want = i >= offset && i < offset + length ? src[i - offset] : 0xC5
                    if dst[i] != want { bad += 1 }
                }
            }
        }
        XCTAssertEqual(bad, 0)
    }

    /// Runs `write(out)` into a Float buffer at every element offset 0..<16
    /// with sentinels around it, streaming and not; all results equal `want`.
    func check(_ name: String, count n: Int, want: [UInt32], elementBytes: Int,
               _ write: (UnsafeMutableRawPointer) throws -> Void) rethrows {
        let pad = 64
        for streaming in [false, true] {
            StreamedOutput.setMinBytes(streaming ? 0 : Int.max)
            for offset in [0, 1, 3, 4, 8, 15] {
                let total = (n + 2 * pad) * elementBytes
                var buf = [UInt8](repeating: 0x7E, count: total)
                try buf.withUnsafeMutableBytes { b in try write(b.baseAddress! + (pad + offset) * elementBytes) }
                let got: [UInt32] = buf.withUnsafeBytes { b in
                    (0..<n).map { i in
                        let p = b.baseAddress! + (pad + offset + i) * elementBytes
                        return elementBytes == 4 ? p.loadUnaligned(as: UInt32.self) : UInt32(p.loadUnaligned(as: UInt16.self))
                    }
                }
                let outside = buf.enumerated().filter { i, v in
                    (i < (pad + offset) * elementBytes || i >= (pad + offset + n) * elementBytes) && v != 0x7E
                }.count
                XCTAssertEqual(outside, 0, "\(name) n=\(n) offset \(offset) streaming \(streaming): bytes outside written")
                if got != want {
                    let i = zip(got, want).enumerated().first { $0.element.0 != $0.element.1 }!.offset
                    XCTFail("\(name) n=\(n) offset \(offset) streaming \(streaming): element \(i) is \(got[i]), want \(want[i])")
                }
            }
        }
    }

    func testDequantizeBlockwise() throws {
        var rng = Rng(12)
        for (n, bs) in [(1, 64), (777, 64), (5000, 256), (70_001, 4096), (9000, 100_000)] {
            let x = rng.floats(n, scale: 3)
            let (q, am) = Blockwise8Reference.quantize(x, code: QuantMap.signedDynamic, blocksize: bs)
            let want = Blockwise8Reference.dequantize(q, absmax: am, code: QuantMap.signedDynamic, blocksize: bs)
            for avx2: Int32 in [1, 0] {
                qembed__avx2_set_enabled(avx2)
                try QuantMap.signedDynamic.withUnsafeBufferPointer { c in
                    try check("dequantize_blockwise f32 avx2=\(avx2) bs=\(bs)", count: n, want: want.map(\.bitPattern), elementBytes: 4) {
                        try Blockwise8.dequantize(q, n: n, absmax: am, code: c.baseAddress!, blocksize: bs, out: $0, dtype: .f32)
                    }
                    try check("dequantize_blockwise bf16 bs=\(bs)", count: n, want: want.map { UInt32(floatToBF16($0)) }, elementBytes: 2) {
                        try Blockwise8.dequantize(q, n: n, absmax: am, code: c.baseAddress!, blocksize: bs, out: $0, dtype: .bf16)
                    }
                }
            }
        }
    }

    func testDequantize4bit() throws {
        var rng = Rng(13)
        for type in [FourBitType.nf4, .fp4] {
            for (n, bs) in [(1, 64), (9, 32), (777, 64), (5001, 256), (40_000, 4096)] {
                let x = rng.floats(n, scale: 2)
                let (packed, am) = FourBitReference.quantize(x, blocksize: bs, type: type)
                let code = FourBit.levels(type).code
                let want: [Float] = (0..<n).map { i in
                    let byte = packed[i / 2]
                    return code[Int(i & 1 == 0 ? byte >> 4 : byte & 15)] * am[i / bs]
                }
                for avx2: Int32 in [1, 0] {
                    qembed__avx2_set_enabled(avx2)
                    try check("dequantize_4bit \(type) f32 avx2=\(avx2) bs=\(bs)", count: n, want: want.map(\.bitPattern), elementBytes: 4) {
                        try FourBit.dequantize(packed, n: n, absmax: am, blocksize: bs, type: type, out: $0, dtype: .f32)
                    }
                }
                try check("dequantize_4bit \(type) f16 bs=\(bs)", count: n, want: want.map { UInt32(Float16($0).bitPattern) }, elementBytes: 2) {
                    try FourBit.dequantize(packed, n: n, absmax: am, blocksize: bs, type: type, out: $0, dtype: .f16)
                }
            }
        }
    }

    func testInt8VectorwiseDequant() throws {
        var rng = Rng(14)
        for (rows, cols) in [(1, 1), (3, 1000), (700, 33), (64, 4096)] {
            let a = rng.floats(rows * cols, scale: 5)
            let ref = Int8RowwiseReference.quantize(a, rows: rows, cols: cols, threshold: 0)
            let want = Int8RowwiseReference.dequantize(ref.q, rows: rows, cols: cols, rowStats: ref.rowStats)
            try check("int8_vectorwise_dequant \(rows)x\(cols)", count: rows * cols, want: want.map(\.bitPattern), elementBytes: 4) {
                try Int8Rowwise.dequantize(ref.q, rows: rows, cols: cols, rowStats: ref.rowStats, out: $0, dtype: .f32)
            }
        }
    }

    /// Row lookups (float gather, int8 and 4-bit tables, nested or not),
    /// rows of one piece and of several, against the scalar rule.
    func testLookups() throws {
        var rng = Rng(15)
        let idx: [Int64] = [29, 0, 7, 7, 12, 28, 3]
        for dim in [33, 64, 1000, 1100, 2050] {
            let w = rng.floats(30 * dim, scale: 0.7)
            let e = try Embedding(EmbeddingConfig(numEmbeddings: 30, embeddingDim: dim), stable: false, seed: 4)
            let wantRows = idx.flatMap { i in (0..<dim).map { e.weight.value(Int(i) * dim + $0).bitPattern } }
            try check("Embedding gather dim \(dim)", count: idx.count * dim, want: wantRows, elementBytes: 4) { out in
                try idx.withUnsafeBytes { try e.forward(Indices($0.baseAddress!, dtype: .i64, count: idx.count), out: out, outDtype: .f32) }
            }
            // StableEmbedding: rows normalized in L1, then streamed; equal to the cached-store path.
            let stable = try Embedding(EmbeddingConfig(numEmbeddings: 30, embeddingDim: dim), stable: true, seed: 5)
            StreamedOutput.setMinBytes(Int.max)
            var plain = [Float](repeating: 0, count: idx.count * dim)
            try idx.withUnsafeBytes { try stable.forward(Indices($0.baseAddress!, dtype: .i64, count: idx.count), out: &plain, outDtype: .f32) }
            XCTAssertNotEqual(plain[0], e.weight.value(Int(idx[0]) * dim))
            try check("StableEmbedding dim \(dim)", count: idx.count * dim, want: plain.map(\.bitPattern), elementBytes: 4) { out in
                try idx.withUnsafeBytes { try stable.forward(Indices($0.baseAddress!, dtype: .i64, count: idx.count), out: out, outDtype: .f32) }
            }
            for kind in [QuantizedEmbedding.Kind.int8, .nf4, .fp4] {
                for compress in kind == .int8 ? [false] : [false, true] {
                    let q = try QuantizedEmbedding.quantize(w, dtype: .f32, rows: 30, dim: dim, kind: kind, blocksize: 64,
                                                            compressStatistics: compress)
                    var want = [UInt32]()
                    for i in idx.map(Int.init) {
                        for j in 0..<dim {
                            let el = i * dim + j
                            let v: Float
                            if kind == .int8 {
                                v = Float(q.q.load(fromByteOffset: el, as: Int8.self)) * (q.scales![i] / 127)
                            } else {
                                let byte = q.q.load(fromByteOffset: el / 2, as: UInt8.self)
                                v = QuantMap.fourBit(kind.fourBit!)[Int(el % 2 == 0 ? byte >> 4 : byte & 15)] * q.absmax(el / 64)
                            }
                            want.append(v.bitPattern)
                        }
                    }
                    for avx2: Int32 in [1, 0] {
                        qembed__avx2_set_enabled(avx2)
                        try check("\(kind) lookup dim \(dim) nested \(compress) avx2=\(avx2)", count: idx.count * dim, want: want, elementBytes: 4) { out in
                            try idx.withUnsafeBytes { try q.forward(Indices($0.baseAddress!, dtype: .i64, count: idx.count), out: out, outDtype: .f32) }
                        }
                    }
                }
            }
        }
    }
}
