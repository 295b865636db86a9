import ArgumentParser
import QembedCore
import QembedIO

struct Lookup: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print rows of a float or quantized table (for checking by hand).")

    @Argument(help: "A .safetensors or .npy file.") var file: String
    // Row ids may be negative (refused as out of range with a message, not as
    // an unknown option), so they are collected unparsed.
    @Argument(parsing: .allUnrecognized, help: "Row ids.") var rawIds: [String] = []
    var ids: [Int64] { rawIds.compactMap { Int64($0) } }
    @Option(name: .long, help: "Tensor / layer prefix (default: \"weight\" or the only table).") var tensor: String?

    func validate() throws {
        if rawIds.isEmpty { throw ValidationError("give at least one row id") }
        for r in rawIds where Int64(r) == nil { throw ValidationError("row id '\(r)' is not an integer") }
    }

    func run() throws {
        let f = try TensorFile(path: file)
        let prefix = tensor ?? Lookup.defaultPrefix(f)
        var rows: [[Float]] = []
        if let p = prefix, f.index(of: p + ".SCB") != nil || f.entries.contains(where: { $0.name.hasPrefix(p + ".quant_state.bitsandbytes__") }) {
            let q = try QuantizedEmbedding.load(file, prefix: p)
            var out = [Float](repeating: 0, count: ids.count * q.embeddingDim)
            try ids.withUnsafeBytes { try q.forward(Indices($0.baseAddress!, dtype: .i64, count: ids.count), out: &out, outDtype: .f32) }
            rows = (0..<ids.count).map { Array(out[($0 * q.embeddingDim)..<(($0 + 1) * q.embeddingDim)]) }
        } else if let p = prefix, let ai = f.index(of: p + ".absmax"), f.index(of: p + ".quant_map") != nil, f.entries[f.index(of: p)!].dtype == .u8 {
            // A blockwise8 file written by `qembed quantize --type blockwise8`.
            guard let bsText = (f.metadata.first(where: { $0.0 == "qembed.\(p).blocksize" }) ?? f.metadata.first(where: { $0.0 == "qembed.blocksize" }))?.1,
                  let bs = Int(bsText), bs >= 1 else {
                throw CLIError(message: "\(file): qembed.blocksize metadata is missing")
            }
            let e = f.entries[f.index(of: p)!]
            let cols = e.shape.last ?? 1, nrows = e.numel / max(cols, 1)
            let q = f.data(f.index(of: p)!).assumingMemoryBound(to: UInt8.self)
            let absmax = Array(UnsafeBufferPointer(start: f.data(ai).assumingMemoryBound(to: Float.self), count: f.entries[ai].numel))
            guard absmax.count == ceilDiv(e.numel, bs) else { throw CLIError(message: "\(file): absmax count does not match the blocksize") }
            let code = QuantMap.signedDynamic
            for id in ids {
                guard id >= 0 && Int(id) < nrows else { throw QembedError(.outOfRange, "row id \(id) is out of range for \(nrows) rows") }
                rows.append((0..<cols).map { j in let el = Int(id) * cols + j; return code[Int(q[el])] * absmax[el / bs] })
            }
        } else {
            let t = try FloatTable.choose(f, tensor.map { [$0] } ?? [], path: file)[0]
            for id in ids {
                guard id >= 0 && Int(id) < t.rows else { throw QembedError(.outOfRange, "row id \(id) is out of range for \(t.rows) rows") }
                rows.append((0..<t.cols).map { t.value(Int(id) * t.cols + $0) })
            }
        }
        for (id, r) in zip(ids, rows) { print("\(id): " + r.map { fmt(Double($0), 6) }.joined(separator: " ")) }
    }

    /// "weight", else the one quantized layer in the file (its prefix), else nil.
    static func defaultPrefix(_ f: TensorFile) -> String? {
        if f.index(of: "weight") != nil { return "weight" }
        var prefixes = QuantizedEmbedding.layerPrefixes(f)
        if prefixes.isEmpty, let m = f.metadata.first(where: { $0.0 == "qembed.prefix" }) { prefixes.append(m.1) }
        return prefixes.count == 1 ? prefixes[0] : nil
    }
}
