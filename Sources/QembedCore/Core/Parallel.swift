import Dispatch
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The process-wide worker-thread count (0 = default).
private let configuredThreads = Atomic<Int>(0)

/// Default thread count: QEMBED_NUM_THREADS when a positive integer, else the online cores.
private let defaultThreads: Int = {
    if let s = getenv("QEMBED_NUM_THREADS"), let n = Int(String(cString: s)), n > 0 {
        return min(n, Parallel.maxThreads)
    }
    return max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
}()

public enum Parallel {
    public static let maxThreads = 1024

    /// The number of worker threads kernels use.
    public static var threadCount: Int {
        let n = configuredThreads.load(ordering: .relaxed)
        return n > 0 ? n : defaultThreads
    }

    /// Sets the worker-thread count; 0 restores the default.
    public static func setThreadCount(_ n: Int) throws(QembedError) {
        guard n >= 0 && n <= maxThreads else {
            throw .invalid("num_threads: \(n) is outside 0...\(maxThreads) (0 restores the default)")
        }
        configuredThreads.store(n, ordering: .relaxed)
    }

    /// Runs `body(range)` over `0..<count` split into contiguous chunks of at
    /// least `grain` items, on up to `threadCount` threads. Chunks are disjoint.
    /// Called from inside another forEachChunk's body, it runs inline: the
    /// outer loop already uses the threads (no nested dispatch, no wake-ups).
    public static func forEachChunk(_ count: Int, grain: Int, _ body: (Range<Int>) -> Void) {
        if count <= 0 { return }
        let threads = min(threadCount, max(1, count / max(grain, 1)))
        if threads <= 1 || pthread_getspecific(insideKey) != nil { body(0..<count); return }
        let chunks = threads
        let per = ceilDiv(count, chunks)
        DispatchQueue.concurrentPerform(iterations: chunks) { c in
            let lo = c * per
            let hi = min(count, lo + per)
            if lo < hi {
                let outer = pthread_getspecific(insideKey)
                pthread_setspecific(insideKey, UnsafeRawPointer(bitPattern: 1))
                body(lo..<hi)
                pthread_setspecific(insideKey, outer)
            }
        }
    }

    /// Runs `body(range)` over `0..<count` in blocks of `block` items that
    /// the threads claim one at a time from a shared counter, on up to
    /// `threadCount` threads (at least `grain` items per thread). A thread
    /// that starts late or is slowed by the host takes fewer blocks, where
    /// forEachChunk's fixed halves make every call wait for the slower one.
    /// For loops whose items cost about the same and are cheap to split
    /// (bags). One thread, or called inside another loop's body: one call
    /// over the whole range. Blocks are disjoint.
    public static func forEachBlock(_ count: Int, block: Int, grain: Int, _ body: (Range<Int>) -> Void) {
        if count <= 0 { return }
        let block = max(1, block), blocks = ceilDiv(count, block)
        let threads = min(threadCount, max(1, count / max(grain, 1)), blocks)
        if threads <= 1 || pthread_getspecific(insideKey) != nil { body(0..<count); return }
        let claims = BlockClaims()
        DispatchQueue.concurrentPerform(iterations: threads) { _ in
            let outer = pthread_getspecific(insideKey)
            pthread_setspecific(insideKey, UnsafeRawPointer(bitPattern: 1))
            while true {
                let b = claims.next.wrappingAdd(1, ordering: .relaxed).oldValue
                if b >= blocks { break }
                body((b * block)..<min(count, (b + 1) * block))
            }
            pthread_setspecific(insideKey, outer)
        }
    }

    /// Thread-specific marker: set while a thread runs a forEachChunk body.
    private static let insideKey: pthread_key_t = {
        var k = pthread_key_t()
        pthread_key_create(&k, nil)
        return k
    }()
}

/// The next block to claim in Parallel.forEachBlock.
private final class BlockClaims: Sendable {
    let next = Atomic<Int>(0)
}
