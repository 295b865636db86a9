import ArgumentParser
import QembedCore
import QembedIO

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the tensors, dtypes, shapes, bytes and quantization metadata of a file.")

    @Argument(help: "A .safetensors or .npy file.") var file: String
    @Flag(name: .long, help: "One JSON object on stdout (file, metadata, tensors, layers) instead of the table.") var json = false

    func run() throws {
        let f = try TensorFile(path: file)
        let layers: [(String, QuantizedEmbedding)] = QuantizedEmbedding.layerPrefixes(f).compactMap { p in
            (try? QuantizedEmbedding.load(file, prefix: p)).map { (p, $0) }
        }
        if json { print(jsonText(f, layers)); return }
        print("\(file): \(humanBytes(f.file.size)), \(f.entries.count) tensors")
        for (k, v) in f.metadata { print("  metadata \(k) = \(v)") }
        // aligned columns (spaces only): name, dtype, shape, bytes
        let rows = f.entries.map { e in [e.name, e.dtypeName, "[" + e.shape.map(String.init).joined(separator: ", ") + "]", humanBytes(e.nbytes)] }
        var widths = [0, 0, 0, 0]
        for r in rows { for c in 0..<4 { widths[c] = max(widths[c], r[c].count) } }
        widths[0] = min(widths[0], 72)
        for (i, e) in f.entries.enumerated() {
            let r = rows[i]
            let line = (0..<4).map { c in c == 3 ? String(repeating: " ", count: max(0, widths[3] - r[3].count)) + r[3]
                                                  : r[c] + String(repeating: " ", count: max(0, widths[c] - r[c].count)) }
            print("  " + line.joined(separator: "  "))
            if e.name.contains(".quant_state.bitsandbytes__"), e.dtype == .u8 {
                let bytes = UnsafeBufferPointer(start: f.data(i).assumingMemoryBound(to: UInt8.self), count: e.nbytes)
                print("    quant_state: \(String(decoding: bytes, as: UTF8.self))")
            }
        }
        for (prefix, q) in layers {
            print("  layer \"\(prefix)\": \(q.kind.name) \(q.numEmbeddings) x \(q.embeddingDim), blocksize \(q.blocksize)\(q.nested ? ", nested statistics" : ""), " +
                  "from \(q.dtype.name), table \(humanBytes(q.tableBytes)) (\(fmt(Double(q.tableBytes) / Double(q.numel), 3)) bytes/param)")
        }
    }

    func jsonText(_ f: TensorFile, _ layers: [(String, QuantizedEmbedding)]) -> String {
        let tensors: [JSON] = f.entries.map { e in
            .object([("name", .string(e.name)), ("dtype", .string(e.dtypeName)), ("shape", .array(e.shape.map { .number(Double($0)) })),
                     ("nbytes", .number(Double(e.nbytes)))])
        }
        let ls: [JSON] = layers.map { p, q in
            .object([("prefix", .string(p)), ("kind", .string(q.kind.name)), ("num_embeddings", .number(Double(q.numEmbeddings))),
                     ("embedding_dim", .number(Double(q.embeddingDim))), ("blocksize", .number(Double(q.blocksize))),
                     ("nested", .bool(q.nested)), ("dtype", .string(q.dtype.name)), ("table_bytes", .number(Double(q.tableBytes)))])
        }
        return JSON.object([("file", .string(file)), ("bytes", .number(Double(f.file.size))),
                            ("metadata", .object(f.metadata.map { ($0.0, .string($0.1)) })),
                            ("tensors", .array(tensors)), ("layers", .array(ls))]).serialized
    }
}
