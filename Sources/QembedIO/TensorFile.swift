import QembedCore
/// One tensor of a safetensors or .npy file: raw bytes inside the mapping.
public struct TensorEntry: Sendable {
    public let name: String
    /// The file's dtype spelling ("F32", "BF16", ... / "<f4").
    public let dtypeName: String
    /// The qembed dtype, or nil for a dtype qembed does not compute with (F64, I16, BOOL, ...).
    public let dtype: DType?
    public let shape: [Int]
    /// Byte offset of the data in the file, and its length.
    public let offset: Int
    public let nbytes: Int
    public var numel: Int { shape.reduce(1, *) }
}

/// A safetensors (or .npy) file, read into memory this object owns (or,
/// with `mapped`, mapped read-only: see MappedFile for that contract);
/// tensors are views into it, valid while this object lives. Everything is
/// validated on open.
public final class TensorFile: @unchecked Sendable {
    public let file: MappedFile
    public let entries: [TensorEntry]
    public let metadata: [(String, String)]

    public static let safetensorsDtypes: [String: (size: Int, dtype: DType?)] = [
        "F64": (8, nil), "F32": (4, .f32), "F16": (2, .f16), "BF16": (2, .bf16),
        "I64": (8, .i64), "I32": (4, .i32), "I16": (2, nil), "I8": (1, .i8),
        "U64": (8, nil), "U32": (4, nil), "U16": (2, nil), "U8": (1, .u8), "BOOL": (1, nil),
        "F8_E4M3": (1, nil), "F8_E5M2": (1, nil),
    ]

    public static func safetensorsName(_ d: DType) -> String {
        switch d {
        case .f32: "F32"
        case .f16: "F16"
        case .bf16: "BF16"
        case .u8: "U8"
        case .i8: "I8"
        case .i32: "I32"
        case .i64: "I64"
        }
    }

    public init(path: String, mapped: Bool = false) throws(QembedError) {
        file = try MappedFile(path: path, mapped: mapped)
        if path.hasSuffix(".npy") {
            (entries, metadata) = try Npy.parse(file)
        } else {
            (entries, metadata) = try TensorFile.parseSafetensors(file)
        }
        var byName: [String: Int] = [:], byKey: [String: Int] = [:]
        for (i, e) in entries.enumerated() where byName[e.name] == nil { byName[e.name] = i }
        for (i, m) in metadata.enumerated() where byKey[m.0] == nil { byKey[m.0] = i }
        nameIndex = byName
        metadataIndex = byKey
    }

    /// Name -> entry index and metadata key -> index: lookups in constant time.
    let nameIndex: [String: Int]
    let metadataIndex: [String: Int]

    /// The documented limits of a safetensors header (qembed.h,
    /// qembed_tensor_file_open): its bytes, tensors and metadata entries.
    public static let maxHeaderBytes = 100_000_000
    public static let maxTensors = 1_000_000
    public static let maxMetadataEntries = 1_000_000

    /// The value of metadata `key`, if present, and its position in `metadata`.
    public func metadataValue(_ key: String) -> String? { metadataIndex[key].map { metadata[$0].1 } }
    public func metadataPosition(_ key: String) -> Int? { metadataIndex[key] }

    public func index(of name: String) -> Int? { nameIndex[name] }

    public func data(_ i: Int) -> UnsafeRawPointer { file.base + entries[i].offset }

    public func entry(named name: String) throws(QembedError) -> (TensorEntry, UnsafeRawPointer) {
        guard let i = index(of: name) else {
            let names = entries.prefix(8).map(\.name).joined(separator: ", ")
            throw QembedError(.invalidArgument, "tensor \"\(name)\" is not in \(file.path) (it holds: \(names)\(entries.count > 8 ? ", ..." : ""))")
        }
        return (entries[i], data(i))
    }

    static func parseSafetensors(_ f: MappedFile) throws(QembedError) -> ([TensorEntry], [(String, String)]) {
        let path = f.path
        func bad(_ m: String) -> QembedError { QembedError(.format, "\(path): \(m)") }
        guard f.size >= 8 else { throw bad("too short for a safetensors file (\(f.size) bytes)") }
        let headerLen = f.base.loadUnaligned(as: UInt64.self).littleEndian
        guard headerLen <= UInt64(f.size - 8) else {
            throw bad("not a safetensors file: its first 8 bytes give a header of \(headerLen) bytes, but the file has \(f.size)")
        }
        guard headerLen >= 2, f.base.load(fromByteOffset: 8, as: UInt8.self) == UInt8(ascii: "{") else {
            throw bad("not a safetensors file: the header does not start with '{'")
        }
        guard headerLen <= UInt64(maxHeaderBytes) else { throw bad("header length \(headerLen) is larger than the limit of 100 MB") }
        let hl = Int(headerLen)
        let json: JSON
        do {
            json = try JSON.parse(UnsafeBufferPointer(start: (f.base + 8).assumingMemoryBound(to: UInt8.self), count: hl))
        } catch {
            throw bad("header: \(error.message)")
        }
        guard case let .object(kv) = json else { throw bad("the header is not a JSON object") }
        guard kv.count <= maxTensors + 1 else { throw bad("\(kv.count) header entries: more than the limit of \(maxTensors) tensors") }
        let dataStart = 8 + hl, dataSize = f.size - dataStart
        var entries: [TensorEntry] = []
        var metadata: [(String, String)] = []
        for (name, v) in kv {
            // A NUL (JSON's \u0000) would cut the name short in C: refuse it.
            guard !name.utf8.contains(0) else { throw bad("a tensor name contains a NUL character (\\u0000)") }
            if name == "__metadata__" {
                guard case let .object(m) = v else { throw bad("__metadata__ is not an object") }
                guard m.count <= maxMetadataEntries else {
                    throw bad("__metadata__ has \(m.count) entries: more than the limit of \(maxMetadataEntries)")
                }
                for (k, x) in m {
                    guard let s = x.string else { throw bad("__metadata__[\"\(k)\"] is not a string") }
                    guard !k.utf8.contains(0), !s.utf8.contains(0) else {
                        throw bad("a __metadata__ key or value contains a NUL character (\\u0000)")
                    }
                    metadata.append((k, s))
                }
                continue
            }
            guard let dn = v["dtype"]?.string else { throw bad("tensor \"\(name)\" has no dtype string") }
            guard let info = safetensorsDtypes[dn] else { throw bad("tensor \"\(name)\" has unknown dtype \"\(dn)\"") }
            guard let sh = v["shape"]?.array else { throw bad("tensor \"\(name)\" has no shape array") }
            var shape: [Int] = []
            var numel = 1
            for d in sh {
                guard let x = d.index else { throw bad("tensor \"\(name)\" has a shape entry that is not a non-negative integer") }
                let (m, o) = numel.multipliedReportingOverflow(by: x)
                guard !o && m <= Int(Int64.max / 16) else { throw bad("tensor \"\(name)\": shape product overflows") }
                numel = m
                shape.append(x)
            }
            guard let offs = v["data_offsets"]?.array, offs.count == 2, let b = offs[0].index, let e = offs[1].index else {
                throw bad("tensor \"\(name)\" has no valid data_offsets [begin, end]")
            }
            guard b <= e, e <= dataSize else { throw bad("tensor \"\(name)\": data_offsets [\(b), \(e)] lie outside the \(dataSize) data bytes") }
            guard e - b == numel * info.size else {
                throw bad("tensor \"\(name)\": \(e - b) bytes for shape \(shape) of \(dn) (expected \(numel * info.size))")
            }
            entries.append(TensorEntry(name: name, dtypeName: dn, dtype: info.dtype, shape: shape, offset: dataStart + b, nbytes: e - b))
        }
        // The format's layout rule (its reference reader enforces it): the
        // tensors tile the data area exactly, from its first byte to the
        // file's last, with no hole, no overlap and nothing after them.
        let sorted = entries.sorted { ($0.offset, $0.nbytes) < ($1.offset, $1.nbytes) }
        var next = dataStart
        for (k, t) in sorted.enumerated() {
            if t.offset > next {
                let gap = t.offset - next
                throw bad(k == 0 ? "\(gap) bytes before the first tensor \"\(t.name)\" (the data must start right after the header)"
                               : "a hole of \(gap) bytes between tensors \"\(sorted[k - 1].name)\" and \"\(t.name)\"")
            }
            if t.offset < next { throw bad("tensors \"\(sorted[k - 1].name)\" and \"\(t.name)\" overlap") }
            next = t.offset + t.nbytes
        }
        if next < f.size {
            throw bad(entries.isEmpty ? "a header with no tensors followed by \(f.size - next) data bytes"
                                      : "\(f.size - next) bytes after the last tensor (the file must end with it)")
        }
        return (entries, metadata)
    }
}


/// A tensor to write: name, dtype (safetensors spelling), shape, and its
/// bytes in one or more consecutive pieces (a table gathered from several
/// files is written without first copying it into one buffer).
public struct TensorSource {
    public var name: String
    public var dtypeName: String
    public var shape: [Int]
    public var pieces: [(data: UnsafeRawPointer, nbytes: Int)]
    public var nbytes: Int { pieces.reduce(0) { $0 + $1.nbytes } }
    public init(name: String, dtypeName: String, shape: [Int], data: UnsafeRawPointer, nbytes: Int) {
        self.init(name: name, dtypeName: dtypeName, shape: shape, pieces: [(data, nbytes)])
    }
    public init(name: String, dtypeName: String, shape: [Int], pieces: [(data: UnsafeRawPointer, nbytes: Int)]) {
        self.name = name; self.dtypeName = dtypeName; self.shape = shape; self.pieces = pieces
    }
}

public enum SafeTensors {
    /// Writes `tensors` (in order) and string metadata atomically.
    public static func write(_ path: String, _ tensors: [TensorSource], metadata: [(String, String)] = []) throws(QembedError) {
        var names = Set<String>()
        var kv: [(String, JSON)] = []
        if !metadata.isEmpty { kv.append(("__metadata__", .object(metadata.map { ($0.0, .string($0.1)) }))) }
        var offset = 0
        for t in tensors {
            guard !t.name.isEmpty, t.name != "__metadata__", names.insert(t.name).inserted else {
                throw .invalid("tensor name \"\(t.name)\" is empty, reserved or repeated")
            }
            guard let info = TensorFile.safetensorsDtypes[t.dtypeName] else { throw .unsupported("tensor \"\(t.name)\": unknown dtype \(t.dtypeName)") }
            guard t.shape.allSatisfy({ $0 >= 0 }), t.shape.reduce(1, *) * info.size == t.nbytes else {
                throw .shape("tensor \"\(t.name)\": \(t.nbytes) bytes do not match shape \(t.shape) of \(t.dtypeName)")
            }
            kv.append((t.name, .object([("dtype", .string(t.dtypeName)), ("shape", .array(t.shape.map { .number(Double($0)) })),
                                        ("data_offsets", .array([.number(Double(offset)), .number(Double(offset + t.nbytes))]))])))
            offset += t.nbytes
        }
        var header = Array(JSON.object(kv).serialized.utf8)
        while header.count % 8 != 0 { header.append(0x20) }
        try AtomicFile.write(path) { (fd) throws(QembedError) in
            var len = UInt64(header.count).littleEndian
            try AtomicFile.writeAll(fd, &len, 8)
            try AtomicFile.writeAll(fd, header)
            for t in tensors { for p in t.pieces where p.nbytes > 0 { try AtomicFile.writeAll(fd, p.data, p.nbytes) } }
        }
    }
}
