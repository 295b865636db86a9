import CQembedSIMD
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

private let streamMinBytes = Atomic<Int>(StreamedOutput.defaultMinBytes)

/// Large outputs written around the caches.
///
/// A kernel that writes an output much larger than the last-level cache with
/// ordinary stores makes the core read every output line before overwriting
/// it (read-for-ownership): a dequantize into float32 moves 1 + 4 + 4 bytes
/// per element instead of 1 + 4. Through `write`, the kernel fills a piece of
/// at most 4 KiB in L1 and the piece goes to memory with non-temporal stores
/// (`qembed__stream_store`). The values written are the same; only the
/// cache traffic differs.
public enum StreamedOutput {
    /// Outputs of at least this many bytes are streamed (whole calls, not
    /// per thread): 32 MiB, the L3 of one Zen 3/Zen 4 CCX, below which the
    /// output may still be in cache when the caller reads it.
    /// QEMBED_STREAM_MIN_BYTES overrides it (tests stream small outputs with 0).
    public static var minBytes: Int { streamMinBytes.load(ordering: .relaxed) }

    static let defaultMinBytes: Int = {
        if let s = getenv("QEMBED_STREAM_MIN_BYTES"), let n = Int(String(cString: s)), n >= 0 { return n }
        return 32 << 20
    }()

    /// Tests: stream outputs of at least `bytes` bytes (0: all of them).
    public static func setMinBytes(_ bytes: Int) { streamMinBytes.store(max(0, bytes), ordering: .relaxed) }

    static let pieceBytes = 4096

    /// Whether an output of `bytes` bytes is streamed.
    @inline(__always)
    public static func streams(bytes: Int) -> Bool { bytes >= minBytes }

    /// Writes elements `range` of `dst`: `fill(from, count, out)` must store
    /// elements from ..< from + count at out[0 ..< count]. Without
    /// streaming, out is dst + from and `fill` runs once; with it, `fill`
    /// runs per piece into a scratch buffer that is streamed to dst + from,
    /// and the stores are fenced before returning unless `fence` is false
    /// (the caller then calls `qembed__stream_fence()` after its last write).
    @inline(__always)
    public static func write<T>(_ dst: UnsafeMutablePointer<T>, _ range: Range<Int>, streaming: Bool, fence: Bool = true,
                                _ fill: (Int, Int, UnsafeMutablePointer<T>) -> Void) {
        guard streaming else {
            fill(range.lowerBound, range.count, dst + range.lowerBound)
            return
        }
        let piece = pieceBytes / MemoryLayout<T>.stride
        withUnsafeTemporaryAllocation(of: T.self, capacity: piece) { buf in
            let s = buf.baseAddress!
            var i = range.lowerBound
            while i < range.upperBound {
                let m = min(piece, range.upperBound - i)
                fill(i, m, s)
                qembed__stream_store(dst + i, s, m * MemoryLayout<T>.stride)
                i += m
            }
        }
        if fence { qembed__stream_fence() }
    }
}
