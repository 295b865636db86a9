import CQembed
import QembedCore

// Shared plumbing of the C thunks: error mapping and argument checks.
// Every thunk runs its body through `capi`, so no Swift error or trap
// crosses the C boundary on bad input.

@inline(__always)
func capi(_ body: () throws(QembedError) -> Void) -> qembed_status {
    do {
        try body()
        return QEMBED_OK
    } catch {
        qembed__set_error(error.message)
        return qembed_status(rawValue: UInt32(error.status.rawValue))
    }
}

@inline(__always)
func need<T>(_ p: T?, _ name: StaticString) throws(QembedError) -> T {
    guard let p else { throw QembedError(.nullPointer, "\(name) is NULL") }
    return p
}

/// A count that must be >= `minimum`, as Int.
@inline(__always)
func count(_ v: Int64, _ name: StaticString, minimum: Int64 = 1) throws(QembedError) -> Int {
    guard v >= minimum else { throw .invalid("\(name) must be >= \(minimum), got \(v)") }
    guard v <= Int64(Int.max / 16) else { throw .shape("\(name) = \(v) is too large") }
    return Int(v)
}

/// Checks that a caller's capacity holds `required` items.
@inline(__always)
func capacity(_ have: Int64, _ required: Int, _ name: StaticString) throws(QembedError) {
    guard have >= Int64(required) else {
        throw .tooSmall("\(name) holds \(have) elements but \(required) are required")
    }
}

/// Checks a byte range the caller hands over does not overflow the address space.
@inline(__always)
func bytes(_ n: Int, _ elementSize: Int, _ name: StaticString) throws(QembedError) -> Int {
    try checkedMul(n, elementSize, "\(name) size in bytes")
}

func staticCString(_ s: StaticString) -> UnsafePointer<CChar> {
    UnsafeRawPointer(s.utf8Start).assumingMemoryBound(to: CChar.self)
}
