import ArgumentParser
import QembedCore
import QembedIO

struct Quantize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Quantize float tables from safetensors or .npy into a quantized safetensors file.",
        discussion: """
        By default the output holds the quantized table(s) only. With --keep-others it is the input \
        with each chosen table replaced by its quantized tensors under the same name (NAME, NAME.absmax, \
        NAME.quant_map, NAME.quant_state.bitsandbytes__nf4 ...) and every other tensor and the metadata \
        copied unchanged: a model file whose embedding is quantized.
        """)

    @Argument(help: "Input .safetensors or .npy file.") var input: String
    @Option(name: .shortAndLong, help: "Output .safetensors file (written atomically).") var output: String
    @Option(name: .long, help: "nf4, fp4, int8 or blockwise8.") var type: String
    @Option(name: .long, help: "Block size (4-bit: 32..4096, default 64; blockwise8: any, default 4096).") var blocksize: Int?
    @Flag(name: .long, help: "Quantize the 4-bit absmax statistics too (nested).") var compressStatistics = false
    @Option(name: .long, help: "Tensor to quantize; repeatable, shell globs allowed (default: \"weight\" or the only 2-D float tensor).")
    var tensor: [String] = []
    @Option(name: .long, help: "Name of the quantized layer in the output (one table only; default: the tensor's name, \"weight\" for .npy).")
    var name: String?
    @Flag(name: .long, help: "Copy every other tensor and the metadata of the input into the output.") var keepOthers = false
    @Flag(name: .long, help: "Replace the output file if it exists (never the input).") var force = false
    @Flag(name: .shortAndLong, help: "No progress on stderr (the summary line is still printed).") var quiet = false

    func validate() throws {
        guard ["nf4", "fp4", "int8", "blockwise8"].contains(type) else {
            throw ValidationError("--type must be nf4, fp4, int8 or blockwise8, not \(type)")
        }
        if let b = blocksize {
            if type == "nf4" || type == "fp4" {
                guard FourBit.blocksizes.contains(b) else { throw ValidationError("--blocksize for 4-bit must be one of \(FourBit.blocksizeList)") }
            } else if type == "int8" {
                throw ValidationError("--blocksize does not apply to int8 (one scale per row)")
            } else if b < 1 { throw ValidationError("--blocksize must be >= 1") }
        }
        if compressStatistics && !(type == "nf4" || type == "fp4") { throw ValidationError("--compress-statistics applies to nf4/fp4 only") }
        if let n = name {
            guard !n.isEmpty, !n.utf8.contains(0) else { throw ValidationError("--name must be a non-empty name") }
            if keepOthers { throw ValidationError("--name and --keep-others exclude each other (the tables keep their names)") }
        }
    }

    /// One quantized table: its tensors (pointing into `keep`), metadata and error.
    struct Result {
        var tensors: [TensorSource]
        var metadata: [(String, String)]
        var report: ErrorReport
        var keep: [AnyObject]
    }

    func run() throws {
        let t0 = monotonicNow()
        Progress.quiet = quiet
        try checkOutput(output, input: input, force: force)
        installSignalCleanup()
        let file = try phase("read \(input) (\(humanBytes(fileSize(input))))") { try TensorFile(path: input) }
        let tables = try FloatTable.choose(file, tensor, path: input)
        if name != nil && tables.count > 1 { throw CLIError.usage("--name names one layer, but \(tables.count) tables were chosen") }
        let isNpy = input.hasSuffix(".npy")
        var results: [String: Result] = [:]
        for t in tables {
            let prefix = name ?? (isNpy ? "weight" : t.entry.name)
            results[t.entry.name] = try quantize(t, prefix: prefix)
        }
        // the output: the quantized tensors, or the input with the tables replaced in place
        var out: [TensorSource] = []
        var metadata: [(String, String)] = []
        if keepOthers {
            for (i, e) in file.entries.enumerated() {
                if let r = results[e.name] { out += r.tensors; continue }
                out.append(TensorSource(name: e.name, dtypeName: e.dtypeName, shape: e.shape, data: file.data(i), nbytes: e.nbytes))
            }
            metadata = file.metadata
        } else {
            for t in tables { out += results[t.entry.name]!.tensors }
            metadata = [("format", "pt")]
        }
        let ours = tables.flatMap { results[$0.entry.name]!.metadata }
        // qembed.layer / qembed.prefix describe a file's single layer; several are listed in qembed.layers
        let single = tables.count == 1 ? ours : ours.filter { $0.0 != "qembed.prefix" && $0.0 != "qembed.layer" }
        metadata = metadata.filter { m in !single.contains { $0.0 == m.0 } } + single
        if tables.count > 1 {
            metadata.append(("qembed.layers", tables.map { name ?? $0.entry.name }.joined(separator: ",")))
        }
        let names = Set(out.map(\.name))
        guard names.count == out.count else {
            throw CLIError(message: "the quantized tensors' names collide with other tensors of the input (e.g. an existing NAME.absmax)")
        }
        try phase("save \(output)") { try withExtendedLifetime(results) { try SafeTensors.write(output, out, metadata: metadata) } }

        let after = fileSize(output)
        if tables.count > 1 {
            for t in tables {
                print("  \(t.entry.name) \(t.entry.shape.map(String.init).joined(separator: "x")) \(t.dtype.name): error: \(results[t.entry.name]!.report.summary)")
            }
        }
        let before = tables.reduce(0) { $0 + $1.entry.nbytes }
        let quantized = tables.reduce(0) { acc, t in acc + results[t.entry.name]!.tensors.reduce(0) { $0 + $1.nbytes } }
        let params = tables.reduce(0) { $0 + $1.entry.numel }
        let what = tables.count == 1
            ? "[\(tables[0].entry.name)] \(tables[0].entry.shape.map(String.init).joined(separator: "x")) \(tables[0].dtype.name) -> [\(name ?? (isNpy ? "weight" : tables[0].entry.name))]"
            : "\(tables.count) tables"
        let worst = tables.map { results[$0.entry.name]!.report }.max { $0.maxAbs < $1.maxAbs }!
        // one summary line: what, sizes, ratio, error, time
        print("\(input) -> \(output): \(type), \(what); tables \(humanBytes(before)) -> \(humanBytes(quantized)) " +
              "(\(fmt(Double(before) / Double(max(quantized, 1)), 3))x smaller, \(fmt(Double(quantized) / Double(params), 3)) bytes/param), " +
              "file \(humanBytes(fileSize(input))) -> \(humanBytes(after)); error: \(tables.count == 1 ? worst.summary : "max abs \(fmt(worst.maxAbs))"); " +
              "\(fmt(monotonicNow() - t0, 3)) s")
        let others = file.entries.count - tables.count
        if !keepOthers && others > 0 {
            print("note: the \(others) other tensor\(others == 1 ? "" : "s") of \(input) are not in \(output); --keep-others copies them")
        }
    }

    func quantize(_ t: FloatTable, prefix: String) throws -> Result {
        var progress = Progress("check \(t.entry.name)", total: t.rows)
        if type == "blockwise8" {
            let bs = blocksize ?? 4096
            let n = t.entry.numel
            let q = try AlignedBuffer(byteCount: n, zeroed: false)
            let absmax = try AlignedBuffer(byteCount: 4 * ceilDiv(n, bs), zeroed: false)
            try finite(t) {
                try phase("quantize \(t.entry.name)") {
                    try Blockwise8.quantize(t.data, dtype: t.dtype, n: n, search: .signedDynamic, blocksize: bs,
                                            out: q.raw.assumingMemoryBound(to: UInt8.self), absmax: absmax.floats())
                }
            }
            var deq = [Float](repeating: 0, count: n)
            try Blockwise8.dequantize(q.raw.assumingMemoryBound(to: UInt8.self), n: n, absmax: absmax.floats(),
                                      code: QuantMap.signedDynamicPointer, blocksize: bs, out: &deq, dtype: .f32)
            var r = ErrorReport()
            deq.withUnsafeBufferPointer { d in
                for row in 0..<t.rows { r.addRow({ t.value(row * t.cols + $0) }, d.baseAddress! + row * t.cols, t.cols); progress.update(row + 1) }
            }
            let tensors = [
                TensorSource(name: prefix, dtypeName: "U8", shape: t.entry.shape, data: q.raw, nbytes: n),
                TensorSource(name: prefix + ".absmax", dtypeName: "F32", shape: [ceilDiv(n, bs)], data: absmax.raw, nbytes: 4 * ceilDiv(n, bs)),
                TensorSource(name: prefix + ".quant_map", dtypeName: "F32", shape: [256], data: QuantMap.signedDynamicPointer, nbytes: 1024),
            ]
            // the same key names as the layers' files: qembed.<prefix>.dtype holds torch's dtype name
            return Result(tensors: tensors, metadata: [("qembed.layer", "Blockwise8"), ("qembed.prefix", prefix),
                                                       ("qembed.\(prefix).dtype", QuantizedEmbedding.torchDtypeName(t.dtype)),
                                                       ("qembed.\(prefix).blocksize", "\(bs)")],
                          report: r, keep: [q, absmax])
        }
        guard t.entry.shape.count == 2 else { throw CLIError(message: "tensor \"\(t.entry.name)\" must be 2-D for an embedding table") }
        let kind: QuantizedEmbedding.Kind = type == "int8" ? .int8 : (type == "nf4" ? .nf4 : .fp4)
        let q = try finite(t) { () throws -> QuantizedEmbedding in
            try phase("quantize \(t.entry.name)") {
                try QuantizedEmbedding.quantize(t.data, dtype: t.dtype, rows: t.rows, dim: t.cols, kind: kind,
                                                blocksize: blocksize ?? 64, compressStatistics: compressStatistics)
            }
        }
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
        let json = JSONBytes(Array(q.quantStateJSON.utf8))
        return Result(tensors: q.tensors(prefix: prefix, json: json.bytes), metadata: q.fileMetadata(prefix: prefix),
                      report: r, keep: [q, json])
    }
}

/// Runs `body`; a non-finite input is reported by tensor, row and column
/// (the kernels name a flat index).
func finite<T>(_ t: FloatTable, _ body: () throws -> T) throws -> T {
    do { return try body() } catch let e as QembedError where e.status == .nonFinite {
        for i in 0..<t.entry.numel where !t.value(i).isFinite {
            throw CLIError(message: "tensor \"\(t.entry.name)\" row \(i / t.cols), column \(i % t.cols) is \(t.value(i)) (a table must be finite)")
        }
        throw e
    }
}

/// Bytes kept alive for a TensorSource that points into them.
final class JSONBytes {
    let bytes: [UInt8]
    init(_ b: [UInt8]) { bytes = b }
}
