import Dispatch
import QembedCore
#if canImport(Glibc)
import Glibc
#endif

/// Shared benchmark plumbing: timing, the memcpy bandwidth probe, reporting.
/// GB/s counts bytes read plus bytes written, for kernels and memcpy alike.
enum Bench {
    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }

    /// Best wall time of `reps` runs after one warm-up.
    static func time(reps: Int = 5, _ body: () throws -> Void) rethrows -> Double {
        try body()
        var best = Double.infinity
        for _ in 0..<reps {
            let t0 = now()
            try body()
            best = min(best, now() - t0)
        }
        return best
    }

    /// b's time over a's, as the median of `reps` back-to-back pairs (a then
    /// b), with each one's best time: on a shared or throttling host the
    /// pairs see the same conditions, where two best-of-N runs minutes apart
    /// need not.
    static func pairedRatio(reps: Int = 9, _ a: () throws -> Void, _ b: () throws -> Void) rethrows -> (a: Double, b: Double, ratio: Double) {
        try a(); try b()
        var ta = Double.infinity, tb = Double.infinity, ratios: [Double] = []
        for _ in 0..<reps {
            let t0 = now()
            try a()
            let t1 = now()
            try b()
            let t2 = now()
            ta = min(ta, t1 - t0); tb = min(tb, t2 - t1)
            ratios.append((t2 - t1) / (t1 - t0))
        }
        ratios.sort()
        return (ta, tb, ratios[ratios.count / 2])
    }

    /// Parallel memcpy of `bytes` bytes on the configured threads: the bandwidth probe.
    static func memcpyGBs(bytes: Int) -> Double {
        let src = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        let dst = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        defer { src.deallocate(); dst.deallocate() }
        memset(src, 1, bytes); memset(dst, 2, bytes)
        let chunk = 1 << 20
        let t = time {
            Parallel.forEachChunk(bytes / chunk, grain: 1) { r in
                memcpy(dst + r.lowerBound * chunk, src + r.lowerBound * chunk, r.count * chunk)
            }
        }
        return Double(2 * bytes) / t / 1e9
    }

    nonisolated(unsafe) static var memcpyRate: Double = 0

    static func header(_ title: String) {
        print("\n## \(title)")
        print(pad("case", nameWidth) + pad("time ms", 10) + pad("M elem/s", 11) + pad("GB/s", 8) + "of memcpy")
    }

    static func report(_ name: String, seconds: Double, elements: Int, bytes: Int, unit: String = "M elem/s") {
        let gbs = Double(bytes) / seconds / 1e9
        let ratio = 100 * gbs / memcpyRate
        // Above the probe with a working set that fits the last-level cache:
        // not DRAM speed. (Streams larger than that can pass the probe too,
        // when they write more than they read: memcpy is half reads.)
        let note = ratio <= 100 ? "" : bytes <= cacheBytes ? " (cache-resident)" : " (write-heavy stream)"
        print(pad(name, nameWidth) + pad(fmt(seconds * 1e3, 2), 10) + pad(fmt(Double(elements) / seconds / 1e6, 1), 11)
              + pad(fmt(gbs, 1), 8) + fmt(ratio, 0) + "%" + note)
    }

    /// Traffic at or below this counts as cache-resident (a generous LLC).
    static let cacheBytes = 64 << 20

    /// Width of the case column: every name of the suite fits.
    static let nameWidth = 62

    static func pad(_ s: String, _ w: Int) -> String { s.count >= w ? s + " " : s + String(repeating: " ", count: w - s.count) }
    static func fmt(_ v: Double, _ digits: Int) -> String {
        var buf = [CChar](repeating: 0, count: 64)
        _ = withVaList([v]) { vsnprintf(&buf, 64, "%.\(digits)f", $0) }
        return String(cString: buf)
    }
}

/// Deterministic pseudo-normal data (sum of uniforms), different per seed.
func randomFloats(_ n: Int, seed: UInt64, scale: Float = 1) -> UnsafeMutablePointer<Float> {
    let p = UnsafeMutablePointer<Float>.allocate(capacity: n)
    Parallel.forEachChunk(n, grain: 1 << 16) { r in
        var s = seed &+ UInt64(r.lowerBound) &* 0x9E37_79B9_7F4A_7C15
        for i in r {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17
            let a = Float(s & 0xFFFF) + Float((s >> 16) & 0xFFFF) + Float((s >> 32) & 0xFFFF) - 98302.5
            p[i] = a / 32768 * scale
        }
    }
    return p
}
