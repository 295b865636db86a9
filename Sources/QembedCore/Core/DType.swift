/// Element types, with the raw values of the C enum `qembed_dtype`.
/// Values are only ever added at the end.
public enum DType: Int32, Sendable, CaseIterable {
    case f32 = 0, f16 = 1, bf16 = 2, u8 = 3, i8 = 4, i32 = 5, i64 = 6

    /// Bytes per element.
    public var size: Int {
        switch self {
        case .f32, .i32: 4
        case .f16, .bf16: 2
        case .u8, .i8: 1
        case .i64: 8
        }
    }

    public var name: String {
        switch self {
        case .f32: "f32"
        case .f16: "f16"
        case .bf16: "bf16"
        case .u8: "u8"
        case .i8: "i8"
        case .i32: "i32"
        case .i64: "i64"
        }
    }

    public var isFloat: Bool { self == .f32 || self == .f16 || self == .bf16 }

    /// Parses a raw C value, naming `argument` in the error.
    public static func from(_ raw: Int32, argument: String) throws(QembedError) -> DType {
        guard let d = DType(rawValue: raw) else {
            throw .unsupported("\(argument): unknown dtype value \(raw)")
        }
        return d
    }

    /// Parses a raw value that must be a float type (F32, F16, BF16).
    public static func float(_ raw: Int32, argument: String) throws(QembedError) -> DType {
        let d = try from(raw, argument: argument)
        guard d.isFloat else {
            throw .unsupported("\(argument): dtype \(d.name) is not supported here (use f32, f16 or bf16)")
        }
        return d
    }
}
