import QembedCore
/// Safetensors layout of quantized embeddings, as transformers/bitsandbytes
/// write 4-bit weights (`weight`, `weight.absmax`, `weight.quant_map`,
/// `weight.nested_absmax`, `weight.nested_quant_map`,
/// `weight.quant_state.bitsandbytes__nf4|fp4` holding JSON) and 8-bit ones
/// (`weight` int8, `weight.SCB`).
extension QuantizedEmbedding {
    public static func torchDtypeName(_ d: DType) -> String {
        switch d { case .f16: "float16"; case .bf16: "bfloat16"; default: "float32" }
    }

    static func dtype(torchName: String) -> DType? {
        switch torchName { case "float32": .f32; case "float16": .f16; case "bfloat16": .bf16; default: nil }
    }

    /// bitsandbytes' QuantState JSON (as_dict(packed=True)'s non-tensor part).
    public var quantStateJSON: String {
        var kv: [(String, JSON)] = [("quant_type", .string(kind.name)), ("blocksize", .number(Double(blocksize))),
                                    ("dtype", .string(QuantizedEmbedding.torchDtypeName(dtype))),
                                    ("shape", .array([.number(Double(numEmbeddings)), .number(Double(embeddingDim))]))]
        if nested {
            kv += [("nested_blocksize", .number(Double(nestedBlocksize))), ("nested_dtype", .string("float32")),
                   ("nested_offset", .number(Double(offset)))]
        }
        return JSON.object(kv).serialized
    }

    /// The tensors of the file layout under `prefix` (default "weight").
    public func tensors(prefix: String = "weight", json: [UInt8]) -> [TensorSource] {
        if kind == .int8 {
            return [TensorSource(name: prefix, dtypeName: "I8", shape: [numEmbeddings, embeddingDim], data: q, nbytes: numel),
                    TensorSource(name: prefix + ".SCB", dtypeName: "F32", shape: [numEmbeddings], data: scales!, nbytes: 4 * numEmbeddings)]
        }
        var t = [TensorSource(name: prefix, dtypeName: "U8", shape: [FourBit.packedBytes(numel), 1], data: q, nbytes: FourBit.packedBytes(numel))]
        if let qa = qabsmax {
            let nb = ceilDiv(blocks, nestedBlocksize)
            t.append(TensorSource(name: prefix + ".absmax", dtypeName: "U8", shape: [blocks], data: qa, nbytes: blocks))
            t.append(TensorSource(name: prefix + ".nested_absmax", dtypeName: "F32", shape: [nb], data: nestedAbsmax!, nbytes: 4 * nb))
            t.append(TensorSource(name: prefix + ".nested_quant_map", dtypeName: "F32", shape: [256], data: nestedCode!, nbytes: 1024))
        } else {
            t.append(TensorSource(name: prefix + ".absmax", dtypeName: "F32", shape: [blocks], data: scales!, nbytes: 4 * blocks))
        }
        let code = kind == .nf4 ? FourBit.nf4CodePointer : FourBit.fp4CodePointer
        t.append(TensorSource(name: prefix + ".quant_map", dtypeName: "F32", shape: [16], data: code, nbytes: 64))
        json.withUnsafeBytes { jb in
            t.append(TensorSource(name: prefix + ".quant_state.bitsandbytes__" + kind.name, dtypeName: "U8", shape: [json.count],
                                  data: jb.baseAddress!, nbytes: json.count))
        }
        return t
    }

    /// The metadata a file holding this layer under `prefix` carries.
    public func fileMetadata(prefix: String) -> [(String, String)] {
        let layer = kind == .int8 ? "Embedding8bit" : (kind == .nf4 ? "EmbeddingNF4" : "EmbeddingFP4")
        // int8 files hold no dtype of their own: keep the source dtype here.
        return [("qembed.layer", layer), ("qembed.prefix", prefix), ("qembed.\(prefix).dtype", QuantizedEmbedding.torchDtypeName(dtype))]
    }

    /// Saves atomically as safetensors (tensors under `prefix`).
    public func save(_ path: String, prefix: String = "weight") throws(QembedError) {
        let json = Array(quantStateJSON.utf8)
        try withExtendedLifetime(json) { () throws(QembedError) in
            try SafeTensors.write(path, tensors(prefix: prefix, json: json), metadata: [("format", "pt")] + fileMetadata(prefix: prefix))
        }
    }

    /// The prefixes of the quantized layers in a file: names X with an
    /// X.SCB (int8) or an X.quant_state.bitsandbytes__* (4-bit) tensor, in
    /// file order.
    public static func layerPrefixes(_ f: TensorFile) -> [String] {
        var out: [String] = []
        for e in f.entries {
            var p: String?
            if let r = e.name.firstRange(of: ".quant_state.bitsandbytes__") { p = String(e.name[..<r.lowerBound]) }
            if e.name.hasSuffix(".SCB") { p = String(e.name.dropLast(4)) }
            if let p, !out.contains(p) { out.append(p) }
        }
        return out
    }

    /// The layer to load when none is named: "weight" if it is one, else the
    /// file's only quantized layer; otherwise an error naming the candidates.
    public static func defaultPrefix(_ f: TensorFile) throws(QembedError) -> String {
        let all = layerPrefixes(f)
        if all.contains("weight") || all.isEmpty && f.index(of: "weight") != nil { return "weight" }
        if all.count == 1 { return all[0] }
        if all.isEmpty {
            throw QembedError(.invalidArgument, "\(f.file.path) holds no quantized embedding (no X.SCB or X.quant_state.bitsandbytes__nf4|fp4 tensor)")
        }
        throw QembedError(.invalidArgument, "\(f.file.path) holds \(all.count) quantized layers; name one: " + all.prefix(12).joined(separator: ", "))
    }

    /// Loads a quantized embedding stored under `prefix` in a safetensors
    /// file: read into memory the layer owns, or with `mapped` left in the
    /// mapped file (zero copy; the file must not change while the layer
    /// lives). Validates the JSON against the tensors.
    public static func load(_ path: String, prefix name: String? = nil, mapped: Bool = false) throws(QembedError) -> QuantizedEmbedding {
        let f = try TensorFile(path: path, mapped: mapped)
        let prefix: String
        if let name { prefix = name } else { prefix = try defaultPrefix(f) }
        func bad(_ m: String) -> QembedError { QembedError(.format, "\(path): \(m)") }
        func tensor(_ name: String, _ dtype: DType, count: Int) throws(QembedError) -> UnsafeRawPointer {
            guard let i = f.index(of: name) else { throw bad("tensor \"\(name)\" is missing") }
            let (e, p) = (f.entries[i], f.data(i))
            guard e.dtype == dtype else { throw bad("\(name) is \(e.dtypeName), expected \(TensorFile.safetensorsName(dtype))") }
            guard e.numel == count else { throw bad("\(name) holds \(e.numel) elements, expected \(count)") }
            return p
        }
        /// A float array in aligned storage (copied only when the file's is misaligned).
        var keep: [AnyObject] = [f]
        func floats(_ p: UnsafeRawPointer, _ count: Int, _ name: String) throws(QembedError) -> UnsafePointer<Float> {
            var ptr = p
            if Int(bitPattern: p) % 4 != 0 {
                let b = try AlignedBuffer(byteCount: count * 4, zeroed: false)
                b.raw.copyMemory(from: p, byteCount: count * 4)
                keep.append(b)
                ptr = UnsafeRawPointer(b.raw)
            }
            let fp = ptr.assumingMemoryBound(to: Float.self)
            for i in 0..<count where !fp[i].isFinite { throw bad("\(name)[\(i)] is \(fp[i])") }
            return fp
        }
        let stateKey = f.entries.first { $0.name.hasPrefix(prefix + ".quant_state.bitsandbytes__") }
        if let sk = stateKey {
            let suffix = String(sk.name.dropFirst((prefix + ".quant_state.bitsandbytes__").count))
            guard let kind: Kind = suffix == "nf4" ? .nf4 : (suffix == "fp4" ? .fp4 : nil) else { throw bad("unknown quant_state key \(sk.name)") }
            guard sk.dtype == .u8 else { throw bad("\(sk.name) must be U8 JSON bytes") }
            let json = try JSON.parse(UnsafeBufferPointer(start: f.data(f.index(of: sk.name)!).assumingMemoryBound(to: UInt8.self), count: sk.nbytes))
            guard case .object = json else { throw bad("the quant_state JSON is not an object") }
            guard json["quant_type"]?.string == suffix else { throw bad("quant_state quant_type \(json["quant_type"]?.serialized ?? "missing") disagrees with the key suffix \(suffix)") }
            guard let bs = json["blocksize"]?.index, FourBit.blocksizes.contains(bs) else { throw bad("quant_state blocksize is missing or unsupported") }
            guard let dn = json["dtype"]?.string, let dtype = dtype(torchName: dn) else { throw bad("quant_state dtype is missing or unsupported") }
            // every entry an integer: [null, 5, 7] is not [5, 7]
            guard let sh = json["shape"]?.array, sh.count == 2, let rows = sh[0].index, let dim = sh[1].index,
                  rows >= 1, dim >= 1 else {
                throw bad("quant_state shape must be [num_embeddings, embedding_dim] (two positive integers), got \(json["shape"]?.serialized ?? "none")")
            }
            let n = try checkedMul(rows, dim, "shape")
            let blocks = ceilDiv(n, bs)
            let q = try tensor(prefix, .u8, count: FourBit.packedBytes(n))
            let qm = try floats(try tensor(prefix + ".quant_map", .f32, count: 16), 16, prefix + ".quant_map")
            let want = QuantMap.fourBit(kind.fourBit!)
            for i in 0..<16 where abs(qm[i] - want[i]) > 1e-6 { throw QembedError(.unsupported, "\(path): \(prefix).quant_map differs from the standard \(suffix) levels at \(i)") }
            if f.index(of: prefix + ".nested_absmax") != nil {
                guard let nbs = json["nested_blocksize"]?.index, nbs >= 1 else { throw bad("quant_state nested_blocksize is missing") }
                guard let off = json["nested_offset"]?.number, Float(off).isFinite else {
                    throw bad("quant_state nested_offset is missing or not a finite float32")
                }
                guard json["nested_dtype"]?.string == "float32" else { throw bad("quant_state nested_dtype must be float32") }
                let qa = try tensor(prefix + ".absmax", .u8, count: blocks)
                let nbk = ceilDiv(blocks, nbs)
                let na = try floats(try tensor(prefix + ".nested_absmax", .f32, count: nbk), nbk, prefix + ".nested_absmax")
                let nc = try floats(try tensor(prefix + ".nested_quant_map", .f32, count: 256), 256, prefix + ".nested_quant_map")
                let layer = QuantizedEmbedding(kind: kind, rows: rows, dim: dim, dtype: dtype, blocksize: bs, q: q, scales: nil,
                                               qabsmax: qa.assumingMemoryBound(to: UInt8.self), nestedAbsmax: na, nestedCode: nc,
                                               nestedBlocksize: nbs, offset: Float(off), keepAlive: keep)
                // finite inputs can still decode to inf (code * nested_absmax + offset)
                for b in 0..<blocks where !layer.absmax(b).isFinite {
                    throw bad("\(prefix).absmax: block \(b) decodes to \(layer.absmax(b)) through the nested statistics (must be finite)")
                }
                return layer
            }
            if json["nested_blocksize"] != nil { throw bad("quant_state describes nested statistics but \(prefix).nested_absmax is missing") }
            let am = try floats(try tensor(prefix + ".absmax", .f32, count: blocks), blocks, prefix + ".absmax")
            return QuantizedEmbedding(kind: kind, rows: rows, dim: dim, dtype: dtype, blocksize: bs, q: q, scales: am, keepAlive: keep)
        }
        if let si = f.index(of: prefix + ".SCB") {
            let (w, wp) = try f.entry(named: prefix)
            guard w.dtype == .i8, w.shape.count == 2, w.shape[0] >= 1, w.shape[1] >= 1 else { throw bad("\(prefix) must be a 2-D I8 tensor for Embedding8bit") }
            let rows = w.shape[0]
            guard f.entries[si].dtype == .f32, f.entries[si].numel == rows else { throw bad("\(prefix).SCB must hold \(rows) F32 values") }
            let scb = try floats(f.data(si), rows, prefix + ".SCB")
            var dtype = DType.f32
            if let name = f.metadata.first(where: { $0.0 == "qembed.\(prefix).dtype" })?.1 {
                guard let d = QuantizedEmbedding.dtype(torchName: name) else { throw bad("metadata qembed.\(prefix).dtype = \(name) is not float32, float16 or bfloat16") }
                dtype = d
            }
            return QuantizedEmbedding(kind: .int8, rows: rows, dim: w.shape[1], dtype: dtype, blocksize: w.shape[1], q: wp, scales: scb, keepAlive: keep)
        }
        let others = layerPrefixes(f)
        throw QembedError(.invalidArgument, "\(path): no quantized embedding under \"\(prefix)\" (expected \(prefix).quant_state.bitsandbytes__nf4|fp4 or \(prefix).SCB)"
                          + (others.isEmpty ? "" : "; the file's quantized layers: " + others.prefix(12).joined(separator: ", ")))
    }
}

extension FourBit {
    static let nf4CodePointer: UnsafePointer<Float> = stablePointer(QuantMap.fourBit(.nf4))
    static let fp4CodePointer: UnsafePointer<Float> = stablePointer(QuantMap.fourBit(.fp4))
}

func stablePointer(_ a: [Float]) -> UnsafePointer<Float> {
    let p = UnsafeMutablePointer<Float>.allocate(capacity: a.count)
    p.initialize(from: a, count: a.count)
    return UnsafePointer(p)
}

extension Embedding {
    /// Saves the float layer atomically as safetensors: "weight" (+ "norm.weight", "norm.bias").
    public func save(_ path: String) throws(QembedError) {
        try lock.withShared { () throws(QembedError) in
            let ts = parameters.map { p in
                TensorSource(name: p.name, dtypeName: TensorFile.safetensorsName(p.dtype), shape: p.shape,
                             data: p.data.raw, nbytes: p.numel * p.dtype.size)
            }
            try SafeTensors.write(path, ts, metadata: [("format", "pt"), ("qembed.layer", isStable ? "StableEmbedding" : "Embedding")])
        }
    }
}
