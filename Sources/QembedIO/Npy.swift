import QembedCore
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
        let (descr, fortran, shape) = try header(UnsafeBufferPointer(rebasing: b[hstart..<(hstart + hlen)]), bad)
        guard let info = descrs[descr] else { throw bad("unsupported dtype descr '\(descr)'") }
        if fortran { throw QembedError(.unsupported, "\(f.path): Fortran-order arrays are not supported") }
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

    /// The header: a Python dict literal with exactly the keys numpy writes
    /// and requires ('descr': a string, 'fortran_order': True/False, 'shape':
    /// a tuple of non-negative integers), in any order, then spaces and "\n".
    static func header(_ h: UnsafeBufferPointer<UInt8>, _ bad: (String) -> QembedError) throws(QembedError)
        -> (descr: String, fortran: Bool, shape: [Int]) {
        var i = 0
        func ws() { while i < h.count, h[i] == 0x20 || h[i] == 0x09 || h[i] == 0x0A || h[i] == 0x0D { i += 1 } }
        func eat(_ c: Character) -> Bool {
            ws()
            if i < h.count, h[i] == c.asciiValue! { i += 1; return true }
            return false
        }
        func quoted() throws(QembedError) -> String {
            ws()
            guard i < h.count, h[i] == 0x27 || h[i] == 0x22 else { throw bad("header: expected a quoted string at byte \(i)") }
            let q = h[i]; i += 1
            let s0 = i
            while i < h.count, h[i] != q { guard h[i] != 0x5C else { throw bad("header: escapes are not supported") }; i += 1 }
            guard i < h.count else { throw bad("header: unterminated string") }
            let text = String(decoding: UnsafeBufferPointer(rebasing: h[s0..<i]), as: UTF8.self)
            i += 1
            return text
        }
        guard eat("{") else { throw bad("header: not a dict literal (no '{')") }
        var descr: String?, fortran: Bool?, shape: [Int]?
        while !eat("}") {
            let key = try quoted()
            guard eat(":") else { throw bad("header: expected ':' after '\(key)'") }
            ws()
            switch key {
            case "descr" where descr == nil: descr = try quoted()
            case "fortran_order" where fortran == nil:
                if h.count - i >= 4, Array(h[i..<(i + 4)]) == Array("True".utf8) { fortran = true; i += 4 }
                else if h.count - i >= 5, Array(h[i..<(i + 5)]) == Array("False".utf8) { fortran = false; i += 5 }
                else { throw bad("header: fortran_order is not True or False") }
            case "shape" where shape == nil:
                guard eat("(") else { throw bad("header: shape is not a tuple") }
                var dims: [Int] = []
                while !eat(")") {
                    ws()
                    var v = 0, digits = 0
                    while i < h.count, h[i] >= 0x30, h[i] <= 0x39 {
                        let (m, o1) = v.multipliedReportingOverflow(by: 10)
                        let (a, o2) = m.addingReportingOverflow(Int(h[i] - 0x30))
                        guard !o1, !o2 else { throw bad("header: a shape entry overflows") }
                        v = a; digits += 1; i += 1
                    }
                    guard digits > 0 else { throw bad("header: bad shape entry at byte \(i)") }
                    dims.append(v)
                    if !eat(",") { guard eat(")") else { throw bad("header: expected ',' or ')' in shape") }; break }
                }
                shape = dims
            default: throw bad("header: unexpected or repeated key '\(key)'")
            }
            if !eat(",") { guard eat("}") else { throw bad("header: expected ',' or '}'") }; break }
        }
        ws()
        guard i == h.count else { throw bad("header: bytes after the dict") }
        guard let descr, let fortran, let shape else {
            throw bad("header: it must hold 'descr', 'fortran_order' and 'shape'")
        }
        return (descr, fortran, shape)
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
