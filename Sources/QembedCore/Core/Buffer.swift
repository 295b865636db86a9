#if canImport(Glibc)
import Glibc
#endif

/// A 64-byte aligned heap buffer owned by a Swift object (zeroed unless asked
/// not to); from 4 MiB on, 2 MiB aligned and advised for transparent huge pages.
/// Or, made with `init(wrapping:byteCount:)`, a view of caller memory that
/// the caller keeps alive and that is never freed here (element-aligned only).
public final class AlignedBuffer: @unchecked Sendable {
    public let raw: UnsafeMutableRawPointer
    public let byteCount: Int
    /// False for wrapped caller memory.
    public let owned: Bool

    /// Wraps caller memory (not copied, not freed).
    public init(wrapping raw: UnsafeMutableRawPointer, byteCount: Int) {
        self.raw = raw
        self.byteCount = byteCount
        owned = false
    }

    public init(byteCount: Int, zeroed: Bool = true) throws(QembedError) {
        var p: UnsafeMutableRawPointer? = nil
        // Large buffers (tables, optimizer state) are 2 MiB aligned and asked
        // for transparent huge pages before their first touch: random row
        // lookups in a big table then miss the TLB far less often.
        let huge = byteCount >= AlignedBuffer.hugeThreshold
        let alignment = huge ? AlignedBuffer.hugePage : 64
        guard posix_memalign(&p, alignment, max(byteCount, 64)) == 0, let p else {
            throw QembedError(.outOfMemory, "cannot allocate \(byteCount) bytes")
        }
        #if os(Linux)
        if huge && AlignedBuffer.useHugePages { _ = madvise(p, byteCount, 14 /* MADV_HUGEPAGE */) }
        #endif
        if zeroed { memset(p, 0, max(byteCount, 64)) }
        raw = p
        self.byteCount = byteCount
        owned = true
    }

    deinit { if owned { free(raw) } }

    static let hugePage = 2 << 20
    static let hugeThreshold = 4 << 20
    static let useHugePages = getenv("QEMBED_NO_HUGEPAGES") == nil

    public func floats() -> UnsafeMutablePointer<Float> { raw.assumingMemoryBound(to: Float.self) }
}
