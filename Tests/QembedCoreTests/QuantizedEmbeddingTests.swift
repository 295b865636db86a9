import XCTest
@testable import QembedCore
import QembedIO
#if canImport(Glibc)
import Glibc
#endif

final class QuantizedEmbeddingTests: XCTestCase {
    let kinds: [QuantizedEmbedding.Kind] = [.int8, .fp4, .nf4]

    func lookup(_ q: QuantizedEmbedding, _ idx: [Int64], dtype: DType = .f32) throws -> [Float] {
        var out = [Float](repeating: .nan, count: idx.count * q.embeddingDim)
        try idx.withUnsafeBytes { try q.forward(Indices($0.baseAddress!, dtype: .i64, count: idx.count), out: &out, outDtype: dtype) }
        return out
    }

    func tmp(_ name: String) -> String { "/tmp/qembed-test-\(getpid())-\(name)" }

    /// upstream test_embedding_lossless: a +/-1 table round-trips exactly.
    func testLossless() throws {
        var rng = Rng(1)
        for dim in [64, 65] {
            let w: [Float] = (0..<(50 * dim)).map { _ in rng.next() & 1 == 0 ? 1 : -1 }
            for kind in kinds {
                for compress in kind == .int8 ? [false] : [false, true] {
                    let q = try QuantizedEmbedding.quantize(w, dtype: .f32, rows: 50, dim: dim, kind: kind, blocksize: 64, compressStatistics: compress)
                    let idx: [Int64] = (0..<37).map { _ in Int64(rng.next() % 50) }
                    let out = try lookup(q, idx)
                    for (k, i) in idx.enumerated() {
                        XCTAssertEqual(Array(out[(k * dim)..<((k + 1) * dim)]), Array(w[(Int(i) * dim)..<((Int(i) + 1) * dim)]), "\(kind) dim \(dim) nested \(compress)")
                    }
                }
            }
        }
    }

    /// Row shards quantize to the whole table's bytes: their lookups tile the
    /// whole table's; split blocks and partial nested statistics are refused.
    func testShardsTileTheWholeTable() throws {
        var rng = Rng(UInt64(time(nil)))
        for (kind, dim, bs) in [(QuantizedEmbedding.Kind.int8, 7, 64), (.fp4, 24, 64), (.nf4, 100, 32), (.nf4, 7, 1024)] {
            let step = kind == .int8 ? 1 : bs / gcd(dim, bs)
            let rows = step * 7 + 1
            let w: [Float] = (0..<(rows * dim)).map { i in rng.uniform() * powf(10, Float((i / dim) % 7) - 3) - 0.3 }
            let whole = try lookup(try QuantizedEmbedding.quantize(w, dtype: .f32, rows: rows, dim: dim, kind: kind, blocksize: bs),
                                   (0..<rows).map(Int64.init))
            var tiled = [Float]()
            for (lo, hi) in [(0, step * 2), (step * 2, step * 5), (step * 5, rows)] {
                let q = try w.withUnsafeBytes { b in
                    try QuantizedEmbedding.quantize(b.baseAddress! + lo * dim * 4, dtype: .f32, rows: hi - lo, dim: dim, kind: kind,
                                                    blocksize: bs, shard: RowShard(rowOffset: lo, totalRows: rows, rows: hi - lo))
                }
                XCTAssertEqual(q.shard, try RowShard(rowOffset: lo, totalRows: rows, rows: hi - lo))
                tiled += try lookup(q, (0..<(hi - lo)).map(Int64.init))
            }
            XCTAssertEqual(tiled.map(\.bitPattern), whole.map(\.bitPattern), "\(kind) dim \(dim) bs \(bs)")
        }
        let w = [Float](repeating: 1, count: 300 * 24)
        XCTAssertThrowsError(try QuantizedEmbedding.quantize(w, dtype: .f32, rows: 32, dim: 24, kind: .nf4, blocksize: 256,
                                                             shard: RowShard(rowOffset: 8, totalRows: 300, rows: 32)))
        XCTAssertThrowsError(try QuantizedEmbedding.quantize(w, dtype: .f32, rows: 8, dim: 24, kind: .nf4, blocksize: 256,
                                                             shard: RowShard(rowOffset: 32, totalRows: 300, rows: 8)))
        XCTAssertThrowsError(try QuantizedEmbedding.quantize(w, dtype: .f32, rows: 32, dim: 24, kind: .nf4, blocksize: 64,
                                                             compressStatistics: true,
                                                             shard: RowShard(rowOffset: 0, totalRows: 300, rows: 32)))
        XCTAssertNoThrow(try QuantizedEmbedding.quantize(w, dtype: .f32, rows: 5, dim: 24, kind: .int8,
                                                         shard: RowShard(rowOffset: 7, totalRows: 300, rows: 5)))
    }

    private func gcd(_ a: Int, _ b: Int) -> Int { b == 0 ? a : gcd(b, a % b) }

    /// upstream test_embedding_error: uniform [0,1) weights.
    func testErrorBounds() throws {
        var rng = Rng(2)
        for dim in [64, 65, 128] {
            let w: [Float] = (0..<(200 * dim)).map { _ in rng.uniform() }
            for kind in kinds {
                let q = try QuantizedEmbedding.quantize(w, dtype: .f32, rows: 200, dim: dim, kind: kind, blocksize: 64)
                let out = try lookup(q, (0..<200).map(Int64.init))
                let err = zip(out, w).map { abs($0 - $1) }.max()!
                XCTAssertLessThanOrEqual(err, kind == .int8 ? 0.05 : 0.20, "\(kind) dim \(dim)")
            }
        }
    }

    /// Row lookups equal a whole-table dequantize for every blocksize and odd dims.
    func testLookupMatchesFullDequantize() throws {
        var rng = Rng(3)
        for (dim, bs) in [(64, 64), (65, 64), (33, 32), (128, 4096), (100, 128)] {
            let w = rng.floats(40 * dim, scale: 0.5)
            for kind in [QuantizedEmbedding.Kind.fp4, .nf4] {
                for compress in [false, true] {
                    let q = try QuantizedEmbedding.quantize(w, dtype: .f32, rows: 40, dim: dim, kind: kind, blocksize: bs, compressStatistics: compress)
                    var absmax = [Float](repeating: 0, count: q.blocks)
                    for b in 0..<q.blocks { absmax[b] = q.absmax(b) }
                    var full = [Float](repeating: 0, count: 40 * dim)
                    try FourBit.dequantize(q.q.assumingMemoryBound(to: UInt8.self), n: 40 * dim, absmax: absmax, blocksize: bs,
                                           type: kind.fourBit!, out: &full, dtype: .f32)
                    let idx: [Int64] = [39, 0, 7, 7, 12]
                    let out = try lookup(q, idx)
                    for (k, i) in idx.enumerated() {
                        XCTAssertEqual(Array(out[(k * dim)..<((k + 1) * dim)]), Array(full[(Int(i) * dim)..<((Int(i) + 1) * dim)]))
                    }
                }
            }
        }
    }

    /// Values above float16's range survive (upstream goes through float16 first).
    func testInt8KeepsLargeValues() throws {
        let w: [Float] = [1e6, -5e5, 3, 0, 70000, 1, 2, 3]
        let q = try QuantizedEmbedding.quantize(w, dtype: .f32, rows: 2, dim: 4, kind: .int8)
        let out = try lookup(q, [0, 1])
        XCTAssertEqual(out[0], 1e6, accuracy: 1)
        XCTAssertEqual(out[4], 70000, accuracy: 1)
    }

    func testSaveLoadRoundTrip() throws {
        var rng = Rng(4)
        let w = rng.floats(300 * 64, scale: 1)
        for kind in kinds {
            for compress in kind == .int8 ? [false] : [false, true] {
                let q = try QuantizedEmbedding.quantize(w, dtype: .f32, rows: 300, dim: 64, kind: kind, compressStatistics: compress)
                let path = tmp("rt.safetensors")
                defer { unlink(path) }
                try q.save(path, prefix: "embeddings.word_embeddings.weight")
                XCTAssertThrowsError(try QuantizedEmbedding.load(path, prefix: "weight"))  // not in the file
                XCTAssertEqual(try QuantizedEmbedding.load(path).numEmbeddings, 300)  // no prefix: the file's only layer
                let r = try QuantizedEmbedding.load(path, prefix: "embeddings.word_embeddings.weight")
                XCTAssertEqual(r.kind, kind); XCTAssertEqual(r.nested, compress)
                let idx: [Int64] = [0, 299, 17]
                XCTAssertEqual(try lookup(r, idx), try lookup(q, idx))
            }
        }
    }

    /// Bytes per parameter: 0.5 for the nibbles plus 4/blocksize of float32
    /// absmax, or 1/blocksize (+ 4/(256 blocksize)) with nested statistics.
    func testNF4TableBytes() throws {
        let w = [Float](repeating: 0.5, count: 16384 * 128)
        let plain = try QuantizedEmbedding.quantize(w, dtype: .f32, rows: 16384, dim: 128, kind: .nf4)
        XCTAssertLessThanOrEqual(Double(plain.tableBytes) / Double(w.count), 0.5626)
        let nested64 = try QuantizedEmbedding.quantize(w, dtype: .f32, rows: 16384, dim: 128, kind: .nf4, compressStatistics: true)
        XCTAssertLessThanOrEqual(Double(nested64.tableBytes) / Double(w.count), 0.5165)
        let nested128 = try QuantizedEmbedding.quantize(w, dtype: .f32, rows: 16384, dim: 128, kind: .nf4, blocksize: 128, compressStatistics: true)
        XCTAssertLessThanOrEqual(Double(nested128.tableBytes) / Double(w.count), 0.5086)
    }

    // MARK: Malformed files

    func write(_ path: String, _ bytes: [UInt8]) {
        let f = fopen(path, "wb")!
        _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, bytes.count, f) }
        fclose(f)
    }

    func file(header: String, data: [UInt8]) -> [UInt8] {
        var h = Array(header.utf8)
        var len = UInt64(h.count).littleEndian
        let lenBytes = withUnsafeBytes(of: &len) { Array($0) }
        h = lenBytes + h
        return h + data
    }

    func testMalformedSafetensorsAreRejected() throws {
        let path = tmp("bad.safetensors")
        defer { unlink(path) }
        let good = file(header: #"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}"#, data: [UInt8](repeating: 0, count: 8))
        write(path, good)
        XCTAssertEqual(try TensorFile(path: path).entries.count, 1)
        let cases: [(String, [UInt8])] = [
            ("truncated", Array(good.prefix(20))),
            ("empty", []),
            ("header too long", [255, 255, 0, 0, 0, 0, 0, 0] + Array(good.dropFirst(8))),
            ("not an object", file(header: "[1, 2]", data: [])),
            ("bad json", file(header: #"{"a": {"dtype": "F32""#, data: [])),
            ("outside", file(header: #"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}}"#, data: [UInt8](repeating: 0, count: 8))),
            ("overlap", file(header: #"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}"#, data: [UInt8](repeating: 0, count: 8))),
            ("byte count", file(header: #"{"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}"#, data: [UInt8](repeating: 0, count: 8))),
            ("unknown dtype", file(header: #"{"a": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}}"#, data: [UInt8](repeating: 0, count: 8))),
            ("negative shape", file(header: #"{"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}"#, data: [UInt8](repeating: 0, count: 8))),
            ("offsets reversed", file(header: #"{"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}}"#, data: [UInt8](repeating: 0, count: 8))),
            ("huge shape", file(header: #"{"a": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 8]}}"#, data: [UInt8](repeating: 0, count: 8))),
        ]
        for (name, bytes) in cases {
            write(path, bytes)
            XCTAssertThrowsError(try TensorFile(path: path), name) {
                XCTAssertEqual(($0 as! QembedError).status, .format, "\(name): \($0)")
            }
        }
        XCTAssertThrowsError(try TensorFile(path: "/nonexistent/x.safetensors")) { XCTAssertEqual(($0 as! QembedError).status, .io) }
    }

    func testQuantStateDisagreementIsRejected() throws {
        let w = Rng(5).floatsCopy(64 * 64)
        let q = try QuantizedEmbedding.quantize(w, dtype: .f32, rows: 64, dim: 64, kind: .nf4)
        let path = tmp("qs.safetensors")
        defer { unlink(path) }
        for (label, json) in [("bad shape", #"{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [64, 65]}"#),
                              ("type", #"{"quant_type": "fp4", "blocksize": 64, "dtype": "float32", "shape": [64, 64]}"#),
                              ("blocksize", #"{"quant_type": "nf4", "blocksize": 128, "dtype": "float32", "shape": [64, 64]}"#),
                              ("dtype", #"{"quant_type": "nf4", "blocksize": 64, "dtype": "int7", "shape": [64, 64]}"#),
                              ("not json", "{quant_type")] {
            let bytes = Array(json.utf8)
            try bytes.withUnsafeBytes { (jb) in
                try SafeTensors.write(path, q.tensors(prefix: "weight", json: bytes))
            }
            XCTAssertThrowsError(try QuantizedEmbedding.load(path), label)
        }
    }

    func testFailedSaveKeepsThePreviousFile() throws {
        let w = Rng(6).floatsCopy(16 * 8)
        let q = try QuantizedEmbedding.quantize(w, dtype: .f32, rows: 16, dim: 8, kind: .int8)
        let path = tmp("keep.safetensors")
        defer { unlink(path) }
        try q.save(path)
        let before = try TensorFile(path: path).file.size
        XCTAssertThrowsError(try SafeTensors.write(path, [TensorSource(name: "x", dtypeName: "F32", shape: [3], data: w, nbytes: 8)]))
        XCTAssertThrowsError(try q.save("/nonexistent-dir/x.safetensors"))
        XCTAssertEqual(try TensorFile(path: path).file.size, before)
        XCTAssertEqual(try lookup(try QuantizedEmbedding.load(path), [3]), try lookup(q, [3]))
    }

    func testNpyRoundTrip() throws {
        let w = Rng(7).floatsCopy(6 * 5)
        let path = tmp("a.npy")
        defer { unlink(path) }
        try Npy.write(path, dtype: .f32, shape: [6, 5], data: w)
        let f = try TensorFile(path: path)
        XCTAssertEqual(f.entries[0].shape, [6, 5])
        XCTAssertEqual(Array(UnsafeBufferPointer(start: f.data(0).assumingMemoryBound(to: Float.self), count: 30)), w)
    }

    func testJSON() throws {
        let j = try JSON.parse(#"{"a": [1, 2.5e3, -0.25, true, null, "x\u00e9\n"], "b": {}}"#)
        XCTAssertEqual(j["a"]?.array?.count, 6)
        XCTAssertEqual(j["a"]?.array?[1].number, 2500)
        XCTAssertEqual(try JSON.parse(j.serialized), j)
        for bad in ["", "{", "[1,]", "{\"a\":1,\"a\":2}", "01", "\"\\x\"", "1 2", String(repeating: "[", count: 100)] {
            XCTAssertThrowsError(try JSON.parse(bad), bad)
        }
    }
}

extension Rng {
    init(_ seed: UInt64, copy: Bool) { self.init(seed) }
    func floatsCopy(_ n: Int) -> [Float] { var r = self; return r.floats(n, scale: 1) }
}
