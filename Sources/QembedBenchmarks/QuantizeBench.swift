import QembedCore

/// Quantization kernels on 64M float32 elements.
enum QuantizeBench {
    static func run(n: Int) throws {
        Bench.header("quantization kernels, \(n / (1 << 20))M float32 elements, \(Parallel.threadCount) threads")
        let x = randomFloats(n, seed: 42)
        defer { x.deallocate() }
        let q = UnsafeMutablePointer<UInt8>.allocate(capacity: n)
        let y = UnsafeMutablePointer<Float>.allocate(capacity: n)
        let am = UnsafeMutablePointer<Float>.allocate(capacity: n / 32 + 1)
        defer { q.deallocate(); y.deallocate(); am.deallocate() }
        for bs in [256, 4096] {
            let t = try Bench.time { try Blockwise8.quantize(x, dtype: .f32, n: n, search: .signedDynamic, blocksize: bs, out: q, absmax: am) }
            Bench.report("quantize_blockwise bs=\(bs)", seconds: t, elements: n, bytes: n * 5)
            let t2 = try Bench.time { try Blockwise8.dequantize(q, n: n, absmax: am, code: QuantMap.signedDynamicPointer, blocksize: bs, out: y, dtype: .f32) }
            Bench.report("dequantize_blockwise bs=\(bs)", seconds: t2, elements: n, bytes: n * 5)
        }
        for type in [FourBitType.nf4, .fp4] {
            let t = try Bench.time { try FourBit.quantize(x, dtype: .f32, n: n, blocksize: 64, type: type, packed: q, absmax: am) }
            Bench.report("quantize_4bit \(type.name) bs=64", seconds: t, elements: n, bytes: n * 4 + n / 2 + n / 16)
            let t2 = try Bench.time { try FourBit.dequantize(q, n: n, absmax: am, blocksize: 64, type: type, out: y, dtype: .f32) }
            Bench.report("dequantize_4bit \(type.name) bs=64", seconds: t2, elements: n, bytes: n * 4 + n / 2 + n / 16)
        }
        let cols = 1024, rows = n / cols
        let i8 = UnsafeMutableRawPointer(q).assumingMemoryBound(to: Int8.self)
        let t = try Bench.time { try Int8Rowwise.quantize(x, dtype: .f32, rows: rows, cols: cols, threshold: 0, out: i8, rowStats: am) }
        Bench.report("int8_vectorwise_quant \(rows)x\(cols)", seconds: t, elements: n, bytes: n * 5)
        let t2 = try Bench.time { try Int8Rowwise.dequantize(i8, rows: rows, cols: cols, rowStats: am, out: y, dtype: .f32) }
        Bench.report("int8_vectorwise_dequant \(rows)x\(cols)", seconds: t2, elements: n, bytes: n * 5)
    }
}
