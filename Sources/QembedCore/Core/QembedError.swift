/// The error every core operation throws. `status` mirrors the C enum
/// `qembed_status` (same raw values); `message` names the argument and the
/// problem and becomes `qembed_last_error()` at the C boundary.
public struct QembedError: Error, CustomStringConvertible, Equatable {
    public enum Status: Int32, Sendable {
        case invalidArgument = 1
        case nullPointer = 2
        case outOfRange = 3
        case unsupported = 4
        case nonFinite = 5
        case shape = 6
        case bufferTooSmall = 7
        case outOfMemory = 8
        case io = 9
        case format = 10
        case `internal` = 11
    }

    public var status: Status
    public var message: String

    public init(_ status: Status, _ message: String) {
        self.status = status
        self.message = message
    }

    public var description: String { message }

    public static func invalid(_ m: String) -> QembedError { QembedError(.invalidArgument, m) }
    public static func unsupported(_ m: String) -> QembedError { QembedError(.unsupported, m) }
    public static func shape(_ m: String) -> QembedError { QembedError(.shape, m) }
    public static func tooSmall(_ m: String) -> QembedError { QembedError(.bufferTooSmall, m) }
}

/// Overflow-checked size arithmetic for caller-given sizes.
public func checkedMul(_ a: Int, _ b: Int, _ what: @autoclosure () -> String) throws(QembedError) -> Int {
    let (p, o) = a.multipliedReportingOverflow(by: b)
    if o || p > Int(Int64.max / 8) { throw .shape("\(what()): \(a) x \(b) overflows") }
    return p
}

/// ceil(n / d) for n >= 0, d >= 1.
public func ceilDiv(_ n: Int, _ d: Int) -> Int { n == 0 ? 0 : (n - 1) / d + 1 }
