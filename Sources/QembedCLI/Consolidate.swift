import ArgumentParser
import QembedCore
import QembedIO

/// `qembed consolidate CHECKPOINT -o FILE`: one ordinary safetensors file
/// from a row-sharded checkpoint written by qembed.distributed's
/// ShardedEmbedding.save (a folder of per-rank files and
/// model.safetensors.index.json). The output is what Embedding.save writes
/// ("weight", and "norm.weight" / "norm.bias" of a StableEmbedding), so
/// qembed.nn.Embedding.load, `qembed quantize` and `qembed lookup` read it.
/// The rank files are mapped, not read: the table goes to the output piece
/// by piece and never has to fit in memory at once.
struct Consolidate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Join a row-sharded checkpoint (qembed.distributed) into one safetensors file.")

    @Argument(help: "The checkpoint folder (holding model.safetensors.index.json) or the index file itself.") var checkpoint: String
    @Option(name: .shortAndLong, help: "Output .safetensors file (written atomically).") var output: String
    @Flag(name: .long, help: "Replace the output file if it exists.") var force = false

    static let indexName = "model.safetensors.index.json"

    func run() throws {
        let t0 = monotonicNow()
        let indexPath = checkpoint.hasSuffix(".json") ? checkpoint : checkpoint + "/" + Consolidate.indexName
        let dir = indexPath.lastIndex(of: "/").map { String(indexPath[..<$0]) } ?? "."
        try checkOutput(output, input: indexPath, force: force)
        installSignalCleanup()
        let plan = try ShardedCheckpoint(indexPath: indexPath, dir: dir)
        var metadata: [(String, String)] = [("format", "pt"), ("qembed.layer", plan.stable ? "StableEmbedding" : "Embedding"),
                                            ("qembed.consolidated_from", "\(plan.worldSize) ranks")]
        if let options = plan.options { metadata.append(("qembed.options", options)) }
        try withExtendedLifetime(plan.files) {
            try SafeTensors.write(output, plan.tensors, metadata: metadata)
        }
        let bytes = plan.tensors.reduce(0) { $0 + $1.nbytes }
        print("\(checkpoint) -> \(output): \(plan.stable ? "StableEmbedding" : "Embedding") \(plan.numEmbeddings) x \(plan.embeddingDim) " +
              "\(plan.dtypeName) from \(plan.pieceCount) shard\(plan.pieceCount == 1 ? "" : "s") of \(plan.worldSize) rank\(plan.worldSize == 1 ? "" : "s"); " +
              "\(humanBytes(bytes)); \(fmt(monotonicNow() - t0, 3)) s")
    }
}

/// A sharded checkpoint's index, checked against its rank files: the pieces
/// of "weight" must tile rows [0, num_embeddings) in order, each a
/// [rows, embedding_dim] tensor of one float dtype, and a StableEmbedding's
/// LayerNorm must be [embedding_dim] in the file the weight map names.
struct ShardedCheckpoint {
    var numEmbeddings = 0, embeddingDim = 0, worldSize = 0, pieceCount = 0
    var stable = false
    var dtypeName = ""
    var options: String?
    var files: [String: TensorFile] = [:]
    var tensors: [TensorSource] = []

    init(indexPath: String, dir: String) throws {
        func bad(_ m: String) -> QembedError { QembedError(.format, "\(indexPath): \(m)") }
        let text = try MappedFile(path: indexPath)
        let index = try JSON.parse(UnsafeBufferPointer(start: text.base.assumingMemoryBound(to: UInt8.self), count: text.size))
        guard let meta = index["metadata"], let V = meta["num_embeddings"]?.index, let D = meta["embedding_dim"]?.index, D > 0,
              let W = meta["world_size"]?.index, W > 0 else {
            throw bad("not a qembed.distributed checkpoint index (metadata.num_embeddings / embedding_dim / world_size missing)")
        }
        if let q = meta["quantized"], let qt = q["quant_type"]?.string {
            throw CLIError(message: "\(indexPath): a quantized checkpoint (\(qt)); consolidate joins float tables. Load it in one process " +
                                    "(qembed.distributed.ShardedEmbedding.load) and save its layer, or consolidate the float checkpoint and run qembed quantize")
        }
        numEmbeddings = V; embeddingDim = D; worldSize = W
        if case .bool(let s)? = meta["stable"] { stable = s }
        if let o = meta["options"] { options = o.serialized }
        guard let pieces = index["shards"]?["weight"]?.array, !pieces.isEmpty || V == 0 else {
            throw bad("no \"shards\".\"weight\" list of pieces")
        }
        var parts: [(data: UnsafeRawPointer, nbytes: Int)] = []
        var next = 0
        for (k, piece) in pieces.enumerated() {
            guard let name = piece["file"]?.string, let lo = piece["row_offset"]?.index, let rows = piece["rows"]?.index else {
                throw bad("piece \(k) of \"weight\" lacks file / row_offset / rows")
            }
            guard lo == next else { throw bad("piece \(k) (\(name)) starts at row \(lo), expected \(next): the pieces must tile the table in order") }
            let f = try file(name, dir)
            let (e, data) = try f.entry(named: "weight")
            guard e.shape == [rows, D] else { throw bad("\(name): \"weight\" has shape \(e.shape), the index says [\(rows), \(D)]") }
            guard e.dtype?.isFloat == true else { throw bad("\(name): \"weight\" is \(e.dtypeName), not a float table") }
            if k == 0 { dtypeName = e.dtypeName } else if e.dtypeName != dtypeName {
                throw bad("\(name): \"weight\" is \(e.dtypeName), earlier pieces are \(dtypeName)")
            }
            parts.append((data, e.nbytes))
            next = lo + rows
        }
        guard next == V else { throw bad("the pieces cover rows [0, \(next)) of \(V)") }
        pieceCount = pieces.count
        if dtypeName.isEmpty { dtypeName = "F32" }
        tensors.append(TensorSource(name: "weight", dtypeName: dtypeName, shape: [V, D], pieces: parts))
        if stable {
            for name in ["norm.weight", "norm.bias"] {
                guard let fname = index["weight_map"]?[name]?.string else { throw bad("a StableEmbedding without \"\(name)\" in weight_map") }
                let f = try file(fname, dir)
                let (e, data) = try f.entry(named: name)
                guard e.shape == [D], e.dtype?.isFloat == true else { throw bad("\(fname): \"\(name)\" is \(e.dtypeName) \(e.shape), expected a float [\(D)]") }
                tensors.append(TensorSource(name: name, dtypeName: e.dtypeName, shape: [D], data: data, nbytes: e.nbytes))
            }
        }
    }

    /// A rank file, opened (mapped) once. Names are plain file names in the
    /// checkpoint folder: a path that leaves it is refused.
    private mutating func file(_ name: String, _ dir: String) throws -> TensorFile {
        if let f = files[name] { return f }
        guard !name.isEmpty, !name.contains("/"), name != ".", name != ".." else {
            throw QembedError(.format, "checkpoint file name \"\(name)\" is not a plain file name in the checkpoint folder")
        }
        let f = try TensorFile(path: dir + "/" + name, mapped: true)
        files[name] = f
        return f
    }
}
