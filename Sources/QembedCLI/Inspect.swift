import ArgumentParser
import QembedCore
import QembedIO

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the tensors, dtypes, shapes, bytes and quantization metadata of a file.")

    @Argument(help: "A .safetensors or .npy file.") var file: String

    func run() throws {
        let f = try TensorFile(path: file)
        print("\(file): \(humanBytes(f.file.size)), \(f.entries.count) tensors")
        for (k, v) in f.metadata { print("  metadata \(k) = \(v)") }
        let width = min(60, f.entries.map(\.name.count).max() ?? 4)
        for (i, e) in f.entries.enumerated() {
            let pad = e.name.count < width ? String(repeating: " ", count: width - e.name.count) : ""
            print("  \(e.name)\(pad)  \(e.dtypeName)\t[\(e.shape.map(String.init).joined(separator: ", "))]\t\(humanBytes(e.nbytes))")
            if e.name.contains(".quant_state.bitsandbytes__"), e.dtype == .u8 {
                let bytes = UnsafeBufferPointer(start: f.data(i).assumingMemoryBound(to: UInt8.self), count: e.nbytes)
                print("    quant_state: \(String(decoding: bytes, as: UTF8.self))")
            }
        }
        for e in f.entries where e.name.hasSuffix(".quant_state.bitsandbytes__nf4") || e.name.hasSuffix(".quant_state.bitsandbytes__fp4") || e.name.hasSuffix(".SCB") {
            let prefix = e.name.hasSuffix(".SCB") ? String(e.name.dropLast(4)) : String(e.name[..<e.name.range(of: ".quant_state.")!.lowerBound])
            if let q = try? QuantizedEmbedding.load(file, prefix: prefix) {
                print("  layer \"\(prefix)\": \(q.kind.name) \(q.numEmbeddings) x \(q.embeddingDim), blocksize \(q.blocksize)\(q.nested ? ", nested statistics" : ""), " +
                      "from \(q.dtype.name), table \(humanBytes(q.tableBytes)) (\(fmt(Double(q.tableBytes) / Double(q.numel), 3)) bytes/param)")
            }
        }
    }
}

extension String {
    /// The first range of `needle` (no Foundation).
    func range(of needle: String) -> Range<String.Index>? {
        var i = startIndex
        while i < endIndex {
            if self[i...].hasPrefix(needle) { return i..<index(i, offsetBy: needle.count) }
            i = index(after: i)
        }
        return nil
    }
}
