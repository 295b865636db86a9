/// NumPy .npy files (format 1.0-3.0, C order, little-endian): read as one
/// tensor named "array"; written from one tensor.
public enum Npy {
    static let descrs: [String: (size: Int, dtype: DType?, st: String)] = [
        "<f4": (4, .f32, "F32"), "<f2": (2, .f16, "F16"), "<f8": (8, nil, "F64"), "|u1": (1, .u8, "U8"), "<u1": (1, .u8, "U8"),
        "|i1": (1, .i8, "I8"), "<i1": (1, .i8, "I8"), "<i4": (4, .i32, "I32"), "<i8": (8, .i64, "I64"),
        "<u2": (2, nil, "U16"), "<i2": (2, nil, "I16"), "|b1": (1, nil, "BOOL"),
        "<u4": (4, nil, "U32"), "<u8": (8, nil, "U64"),
    ]

    static func parse(_ f: MappedFile) throws(QembedError) -> ([TensorEntry], [(String, String)]) {
        func bad(_ m: String) -> QembedError { QembedError(.format, "\(f.path): \(m)") }
        let b = UnsafeBufferPointer(start: f.base.assumingMemoryBound(to: UInt8.self), count: f.size)
        guard f.size >= 10, b[0] == 0x93, Array(b[1..<6]) == Array("NUMPY".utf8) else { throw bad("not a .npy file (bad magic)") }
        let major = b[6]
        let hlen: Int, hstart: Int
        if major == 1 { hlen = Int(b[8]) | Int(b[9]) << 8; hstart = 10 }
        else if major == 2 || major == 3 {
            guard f.size >= 12 else { throw bad("truncated header") }
            hlen = Int(b[8]) | Int(b[9]) << 8 | Int(b[10]) << 16 | Int(b[11]) << 24; hstart = 12
        } else { throw bad("unsupported .npy version \(major)") }
        guard hstart + hlen <= f.size else { throw bad("header length \(hlen) exceeds the file size") }
        let header = String(decoding: UnsafeBufferPointer(rebasing: b[hstart..<(hstart + hlen)]), as: UTF8.self)
        func field(_ key: String) -> Substring? {
            let needle = Array("'\(key)':")
            let chars = Array(header)
            guard chars.count >= needle.count else { return nil }
            for i in 0...(chars.count - needle.count) where Array(chars[i..<(i + needle.count)]) == needle {
                let start = header.index(header.startIndex, offsetBy: i + needle.count)
                return header[start...].drop { $0 == " " }
            }
            return nil
        }
        guard let d = field("descr"), d.first == "'", let end = d.dropFirst().firstIndex(of: "'") else { throw bad("no descr in the header") }
        let descr = String(d[d.index(after: d.startIndex)..<end])
        guard let info = descrs[descr] else { throw bad("unsupported dtype descr '\(descr)'") }
        if let fo = field("fortran_order"), fo.hasPrefix("True") { throw QembedError(.unsupported, "\(f.path): Fortran-order arrays are not supported") }
        guard let s = field("shape"), s.first == "(", let close = s.firstIndex(of: ")") else { throw bad("no shape in the header") }
        var shape: [Int] = []
        for part in s[s.index(after: s.startIndex)..<close].split(separator: ",") {
            let t = part.trimmingCharacters()
            if t.isEmpty { continue }
            guard let v = Int(t), v >= 0 else { throw bad("bad shape entry '\(t)'") }
            shape.append(v)
        }
        var numel = 1
        for v in shape {
            let (m, o) = numel.multipliedReportingOverflow(by: v)
            guard !o, m <= Int(Int64.max / 16) else { throw bad("shape product overflows") }
            numel = m
        }
        let offset = hstart + hlen
        guard f.size - offset == numel * info.size else {
            throw bad("\(f.size - offset) data bytes for shape \(shape) of \(descr) (expected \(numel * info.size))")
        }
        return ([TensorEntry(name: "array", dtypeName: info.st, dtype: info.dtype, shape: shape, offset: offset, nbytes: numel * info.size)], [])
    }

    /// Writes one array atomically as .npy version 1.0.
    public static func write(_ path: String, dtype: DType, shape: [Int], data: UnsafeRawPointer) throws(QembedError) {
        let descr: String
        switch dtype {
        case .f32: descr = "<f4"
        case .f16: descr = "<f2"
        case .u8: descr = "|u1"
        case .i8: descr = "|i1"
        case .i32: descr = "<i4"
        case .i64: descr = "<i8"
        case .bf16: throw .unsupported("bf16 has no .npy dtype; save it as safetensors")
        }
        let shapeText = shape.count == 1 ? "(\(shape[0]),)" : "(" + shape.map(String.init).joined(separator: ", ") + ")"
        var header = "{'descr': '\(descr)', 'fortran_order': False, 'shape': \(shapeText), }"
        while (10 + header.utf8.count + 1) % 64 != 0 { header += " " }
        header += "\n"
        var bytes: [UInt8] = [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(header.utf8.count & 0xFF), UInt8(header.utf8.count >> 8)]
        bytes += Array(header.utf8)
        let nbytes = shape.reduce(1, *) * dtype.size
        try AtomicFile.write(path) { (fd) throws(QembedError) in
            try AtomicFile.writeAll(fd, bytes)
            if nbytes > 0 { try AtomicFile.writeAll(fd, data, nbytes) }
        }
    }
}

extension Substring {
    func trimmingCharacters() -> String {
        String(self.drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
    }
}
