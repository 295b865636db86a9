#if canImport(Glibc)
import Glibc
#endif

/// A 64-byte aligned heap buffer owned by a Swift object (zeroed unless asked not to).
public final class AlignedBuffer: @unchecked Sendable {
    public let raw: UnsafeMutableRawPointer
    public let byteCount: Int

    public init(byteCount: Int, zeroed: Bool = true) throws(QembedError) {
        var p: UnsafeMutableRawPointer? = nil
        guard posix_memalign(&p, 64, max(byteCount, 64)) == 0, let p else {
            throw QembedError(.outOfMemory, "cannot allocate \(byteCount) bytes")
        }
        if zeroed { memset(p, 0, max(byteCount, 64)) }
        raw = p
        self.byteCount = byteCount
    }

    deinit { free(raw) }

    public func floats() -> UnsafeMutablePointer<Float> { raw.assumingMemoryBound(to: Float.self) }
}
