import ArgumentParser
import QembedCore
import QembedIO

struct Quantize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Quantize a float table from safetensors or .npy into a quantized safetensors file.")

    @Argument(help: "Input .safetensors or .npy file.") var input: String
    @Option(name: .shortAndLong, help: "Output .safetensors file (written atomically).") var output: String
    @Option(name: .long, help: "nf4, fp4, int8 or blockwise8.") var type: String
    @Option(name: .long, help: "Block size (4-bit: 32..4096, default 64; blockwise8: any, default 4096).") var blocksize: Int?
    @Flag(name: .long, help: "Quantize the 4-bit absmax statistics too (nested).") var compressStatistics = false
    @Option(name: .long, help: "Tensor to quantize (default: \"weight\" or the only 2-D float tensor).") var tensor: String?
    @Flag(name: .long, help: "Replace the output file if it exists (never the input).") var force = false

    func validate() throws {
        guard ["nf4", "fp4", "int8", "blockwise8"].contains(type) else {
            throw ValidationError("--type must be nf4, fp4, int8 or blockwise8, not \(type)")
        }
        if let b = blocksize {
            if type == "nf4" || type == "fp4" {
                guard FourBit.blocksizes.contains(b) else { throw ValidationError("--blocksize for 4-bit must be one of 32, 64, 128, 256, 512, 1024, 2048, 4096") }
            } else if type == "int8" {
                throw ValidationError("--blocksize does not apply to int8 (one scale per row)")
            } else if b < 1 { throw ValidationError("--blocksize must be >= 1") }
        }
        if compressStatistics && !(type == "nf4" || type == "fp4") { throw ValidationError("--compress-statistics applies to nf4/fp4 only") }
    }

    func run() throws {
        try checkOutput(output, input: input, force: force)
        installSignalCleanup()
        let t = try FloatTable(path: input, tensor: tensor)
        let name = t.entry.name
        let before = t.entry.nbytes
        var progress = Progress("quantize \(name)", total: t.rows)
        let report: ErrorReport
        if type == "blockwise8" {
            let bs = blocksize ?? 4096
            let n = t.entry.numel
            var q = [UInt8](repeating: 0, count: n)
            var absmax = [Float](repeating: 0, count: ceilDiv(n, bs))
            try Blockwise8.quantize(t.data, dtype: t.dtype, n: n, search: .signedDynamic, blocksize: bs, out: &q, absmax: &absmax)
            var deq = [Float](repeating: 0, count: n)
            try Blockwise8.dequantize(q, n: n, absmax: absmax, code: QuantMap.signedDynamicPointer, blocksize: bs, out: &deq, dtype: .f32)
            var r = ErrorReport()
            deq.withUnsafeBufferPointer { d in
                for row in 0..<t.rows { r.addRow({ t.value(row * t.cols + $0) }, d.baseAddress! + row * t.cols, t.cols); progress.update(row + 1) }
            }
            report = r
            let code = QuantMap.signedDynamic
            try q.withUnsafeBytes { qb in
                try absmax.withUnsafeBytes { ab in
                    try code.withUnsafeBytes { cb in
                        try SafeTensors.write(output, [
                            TensorSource(name: name, dtypeName: "U8", shape: t.entry.shape, data: qb.baseAddress!, nbytes: n),
                            TensorSource(name: name + ".absmax", dtypeName: "F32", shape: [absmax.count], data: ab.baseAddress!, nbytes: ab.count),
                            TensorSource(name: name + ".quant_map", dtypeName: "F32", shape: [256], data: cb.baseAddress!, nbytes: 1024),
                        ], metadata: [("format", "pt"), ("qembed.layer", "Blockwise8"), ("qembed.blocksize", "\(bs)"),
                                      ("qembed.dtype", t.dtype.name), ("qembed.prefix", name)])
                    }
                }
            }
        } else {
            guard t.entry.shape.count == 2 else { throw CLIError(message: "tensor \"\(name)\" must be 2-D for an embedding table") }
            let kind: QuantizedEmbedding.Kind = type == "int8" ? .int8 : (type == "nf4" ? .nf4 : .fp4)
            let q = try QuantizedEmbedding.quantize(t.data, dtype: t.dtype, rows: t.rows, dim: t.cols, kind: kind,
                                                    blocksize: blocksize ?? 64, compressStatistics: compressStatistics)
            var r = ErrorReport()
            let chunk = 1024
            var row = 0
            let buf = UnsafeMutablePointer<Float>.allocate(capacity: chunk * t.cols)
            defer { buf.deallocate() }
            while row < t.rows {
                let m = min(chunk, t.rows - row)
                let ids = (row..<(row + m)).map { Int64($0) }
                try ids.withUnsafeBytes { try q.forward(Indices($0.baseAddress!, dtype: .i64, count: m), out: buf, outDtype: .f32) }
                for k in 0..<m { let rr = row + k; r.addRow({ t.value(rr * t.cols + $0) }, buf + k * t.cols, t.cols) }
                row += m
                progress.update(row)
            }
            report = r
            try q.save(output, prefix: name)
        }
        let after = fileSize(output)
        print("\(input) [\(name)] \(t.entry.shape.map(String.init).joined(separator: "x")) \(t.dtype.name) -> \(output) (\(type))")
        print("size: \(humanBytes(before)) -> \(humanBytes(after)) (\(fmt(Double(before) / Double(max(after, 1)), 3))x smaller, \(fmt(Double(after) / Double(t.entry.numel), 3)) bytes/param)")
        print("error: \(report.summary)")
    }
}
