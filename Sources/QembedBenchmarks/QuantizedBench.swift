import QembedCore
import QembedIO
#if canImport(Glibc)
import Glibc
#endif

/// Quantized lookups (65536 random rows of a 250,000 x 1024 table) against
/// the f32 lookup, table bytes, and loading/quantizing a 1 GB safetensors file.
/// Bytes counted: output written (+ table bytes read for the rows).
enum QuantizedBench {
    static func run(quick: Bool) throws {
        let (rows, dim, count) = quick ? (20_000, 1024, 8192) : (250_000, 1024, 65536)
        Bench.header("quantized lookups: \(count) random rows of \(rows)x\(dim), \(Parallel.threadCount) threads (GB/s of output)")
        let e = try Embedding(EmbeddingConfig(numEmbeddings: rows, embeddingDim: dim), seed: 1)
        var rng = SplitMix(seed: 5)
        let idx = (0..<count).map { _ in Int64(rng.next() % UInt64(rows)) }
        let out = UnsafeMutablePointer<Float>.allocate(capacity: count * dim)
        defer { out.deallocate() }
        try idx.withUnsafeBytes { ib in
            let ind = try Indices(ib.baseAddress!, dtype: .i64, count: count)
            let tf = try Bench.time { try e.forward(ind, out: out, outDtype: .f32) }
            Bench.report("f32 (table \((rows * dim * 4) >> 20) MiB)", seconds: tf, elements: count, bytes: count * dim * 4, unit: "M rows/s")
            for (kind, compress) in [(QuantizedEmbedding.Kind.int8, false), (.nf4, false), (.nf4, true), (.fp4, false)] {
                let q = try QuantizedEmbedding.from(e, kind: kind, blocksize: 64, compressStatistics: compress)
                let t = try Bench.time { try q.forward(ind, out: out, outDtype: .f32) }
                let bpp = Bench.fmt(Double(q.tableBytes) / Double(rows * dim), 3)
                Bench.report("\(kind.name)\(compress ? "+nested" : "") (\(q.tableBytes >> 20) MiB, \(bpp) B/param) \(Bench.fmt(tf / t, 2))x f32 speed", seconds: t,
                             elements: count, bytes: count * dim * 4, unit: "M rows/s")
                if kind == .nf4 && !compress {
                    // LoRA (r = 8) over the same table and rows, A trained (nonzero).
                    let lora = try LoraEmbedding(base: .quantized(q), r: 8, alpha: 16, useRslora: false, seed: 1)
                    LoraEmbedding.fillNormal(lora.aT.data.floats(), lora.aT.numel, seed: 2)
                    let (_, tl, ratio) = try Bench.pairedRatio({ try q.forward(ind, out: out, outDtype: .f32) },
                                                               { try lora.forward(ind, out: UnsafeMutableRawPointer(out), outDtype: .f32) })
                    Bench.report("nf4 + LoRA r=8: \(Bench.fmt(ratio, 2))x the nf4 lookup's time (median of 9 pairs)", seconds: tl,
                                 elements: count, bytes: count * dim * 4, unit: "M rows/s")
                }
            }
        }
        // A 1 GB float file: write, then time mmap+validate and quantize from the mapping.
        let path = "/tmp/qembed-bench-\(getpid()).safetensors"
        defer { unlink(path) }
        try e.save(path)
        let tOpen = try Bench.time(reps: 3) { _ = try TensorFile(path: path, mapped: true) }
        let f = try TensorFile(path: path, mapped: true)
        let (entry, data) = try f.entry(named: "weight")
        print(Bench.pad("open+validate \(entry.nbytes >> 20) MiB safetensors (mmap)", Bench.nameWidth) + Bench.fmt(tOpen * 1e3, 3) + " ms")
        let tRead = Bench.time(reps: 1) {
            var s: UInt8 = 0
            let b = data.assumingMemoryBound(to: UInt8.self)
            var i = 0
            while i < entry.nbytes { s &+= b[i]; i += 4096 }
            if s == 255 { print("") }
        }
        print(Bench.pad("touch every page of it", Bench.nameWidth) + Bench.fmt(tRead * 1e3, 1) + " ms")
        let tq = try Bench.time(reps: 1) {
            _ = try QuantizedEmbedding.quantize(data, dtype: .f32, rows: rows, dim: dim, kind: .nf4, blocksize: 64)
        }
        Bench.report("quantize the mapped table to NF4", seconds: tq, elements: rows * dim, bytes: rows * dim * 4)
    }
}
