import Synchronization

/// Per-block absolute maxima with a finiteness check: the first pass of every
/// blockwise quantizer. Works on magnitude bit patterns, whose integer order is
/// the order of |x| for IEEE formats, so one integer max gives both absmax and
/// whether any NaN/Inf is present.
public enum Absmax {
    /// Writes max |x| of each block of `blocksize` elements into `absmax`
    /// (ceil(n / blocksize) entries). Throws `.nonFinite` naming the first
    /// non-finite element; then `absmax` content is unspecified.
    public static func blocks<E: FloatElement>(_ e: E.Type, _ src: UnsafePointer<E.Storage>, n: Int,
                                               blocksize: Int, absmax: UnsafeMutablePointer<Float>,
                                               argument: String = "A") throws(QembedError) {
        let nblocks = ceilDiv(n, blocksize)
        let bad = Atomic<Bool>(false)
        Parallel.forEachChunk(nblocks, grain: max(1, 16384 / blocksize)) { range in
            var anyBad = false
            for b in range {
                let lo = b * blocksize
                let m = maxMagnitudeBits(e, src + lo, min(blocksize, n - lo))
                if m >= E.nonFiniteBits { anyBad = true }
                absmax[b] = E.float(fromMagnitudeBits: m)
            }
            if anyBad { bad.store(true, ordering: .relaxed) }
        }
        if bad.load(ordering: .relaxed) {
            throw firstNonFinite(e, src, n: n, argument: argument)
        }
    }

    /// The skeleton every blockwise quantizer shares, one pass over the
    /// input: for each block (in parallel), its absmax, a finiteness check,
    /// then `block(b, start, count, scale)` while the block is still in cache.
    /// Throws `.nonFinite` naming the first non-finite element; blocks before
    /// the one that held it may have been written (the quantize kernels
    /// document their outputs as unspecified then: a validation pass first
    /// would read the whole input from memory twice).
    @inline(__always)
    public static func quantizeBlocks<E: FloatElement>(_ e: E.Type, _ src: UnsafePointer<E.Storage>, n: Int, blocksize: Int,
                                                      absmax: UnsafeMutablePointer<Float>,
                                                      _ block: (Int, Int, Int, BlockScale) -> Void) throws(QembedError) {
        let nblocks = ceilDiv(n, blocksize)
        let bad = Atomic<Bool>(false)
        Parallel.forEachChunk(nblocks, grain: max(1, 16384 / blocksize)) { range in
            for b in range {
                let lo = b * blocksize, count = min(blocksize, n - lo)
                let m = maxMagnitudeBits(e, src + lo, count)
                if m >= E.nonFiniteBits || bad.load(ordering: .relaxed) {
                    bad.store(true, ordering: .relaxed)
                    return
                }
                let a = E.float(fromMagnitudeBits: m)
                absmax[b] = a
                block(b, lo, count, BlockScale(absmax: a))
            }
        }
        if bad.load(ordering: .relaxed) {
            throw firstNonFinite(e, src, n: n, argument: "A")
        }
    }

    /// The error naming the first non-finite element of `src`.
    public static func firstNonFinite<E: FloatElement>(_ e: E.Type, _ src: UnsafePointer<E.Storage>, n: Int, argument: String) -> QembedError {
        for i in 0..<n where E.magnitudeBits(src, i) >= E.nonFiniteBits {
            return QembedError(.nonFinite, "\(argument)[\(i)] is \(E.load(src, i)) (inputs must be finite)")
        }
        return QembedError(.internal, "non-finite value reported but not found")
    }

    /// max magnitude bits over `count` elements.
    @inline(__always)
    public static func maxMagnitudeBits<E: FloatElement>(_ e: E.Type, _ p: UnsafePointer<E.Storage>, _ count: Int) -> UInt32 {
        if E.self == F32.self {
            return maxBitsF32(UnsafeRawPointer(p).assumingMemoryBound(to: UInt32.self), count)
        }
        if E.Storage.self == UInt16.self {
            return UInt32(maxBits16(UnsafeRawPointer(p).assumingMemoryBound(to: UInt16.self), count))
        }
        var m: UInt32 = 0
        for i in 0..<count { m = Swift.max(m, E.magnitudeBits(p, i)) }
        return m
    }

    @inline(__always)
    static func maxBitsF32(_ p: UnsafePointer<UInt32>, _ count: Int) -> UInt32 {
        let mask = SIMD16<UInt32>(repeating: 0x7FFF_FFFF)
        var acc0 = SIMD16<UInt32>(repeating: 0), acc1 = acc0
        var i = 0
        let raw = UnsafeRawPointer(p)
        while i + 32 <= count {
            let v0 = raw.loadUnaligned(fromByteOffset: i * 4, as: SIMD16<UInt32>.self) & mask
            acc0 = acc0.replacing(with: v0, where: v0 .> acc0)
            let v1 = raw.loadUnaligned(fromByteOffset: i * 4 + 64, as: SIMD16<UInt32>.self) & mask
            acc1 = acc1.replacing(with: v1, where: v1 .> acc1)
            i += 32
        }
        acc0 = acc0.replacing(with: acc1, where: acc1 .> acc0)
        var m: UInt32 = 0  // (SIMD .max() is an out-of-line generic call)
        for l in 0..<16 { m = Swift.max(m, acc0[l]) }
        while i < count { m = Swift.max(m, p[i] & 0x7FFF_FFFF); i += 1 }
        return m
    }

    @inline(__always)
    static func maxBits16(_ p: UnsafePointer<UInt16>, _ count: Int) -> UInt16 {
        // Signed lanes: masked magnitudes fit in Int16, and AVX2 compares
        // signed 16-bit lanes in one instruction (unsigned ones went lane by lane).
        // One 256-bit register per accumulator: 512-bit SIMD32 masked ops
        // spill to the stack in Swift 6.3.
        let mask = SIMD16<Int16>(repeating: 0x7FFF)
        var acc0 = SIMD16<Int16>(repeating: 0), acc1 = acc0
        var i = 0
        let raw = UnsafeRawPointer(p)
        while i + 32 <= count {
            let v0 = raw.loadUnaligned(fromByteOffset: i * 2, as: SIMD16<Int16>.self) & mask
            acc0 = acc0.replacing(with: v0, where: v0 .> acc0)
            let v1 = raw.loadUnaligned(fromByteOffset: i * 2 + 32, as: SIMD16<Int16>.self) & mask
            acc1 = acc1.replacing(with: v1, where: v1 .> acc1)
            i += 32
        }
        acc0 = acc0.replacing(with: acc1, where: acc1 .> acc0)
        var m: UInt16 = 0
        for l in 0..<16 { m = Swift.max(m, UInt16(acc0[l])) }
        while i < count { m = Swift.max(m, p[i] & 0x7FFF); i += 1 }
        return m
    }
}

extension Absmax {
    /// max magnitude bits over `count` elements, scanned by all threads.
    public static func parallelMaxMagnitudeBits<E: FloatElement>(_ e: E.Type, _ p: UnsafePointer<E.Storage>, _ count: Int) -> UInt32 {
        let result = Atomic<UInt32>(0)
        Parallel.forEachChunk(count, grain: 1 << 16) { r in
            let m = maxMagnitudeBits(e, p + r.lowerBound, r.count)
            var old = result.load(ordering: .relaxed)
            while m > old {
                let (done, now) = result.compareExchange(expected: old, desired: m, ordering: .relaxed)
                if done { break }
                old = now
            }
        }
        return result.load(ordering: .relaxed)
    }
}

extension Absmax {
    /// max |x| over `count` elements of a float dtype (f32 when not f16/bf16),
    /// scanned by all threads; infinity when any is not finite.
    public static func maxMagnitude(_ dtype: DType, _ raw: UnsafeRawPointer, _ count: Int) -> Double {
        func scan<E: FloatElement>(_ e: E.Type) -> Double {
            let bits = parallelMaxMagnitudeBits(e, raw.assumingMemoryBound(to: E.Storage.self), count)
            return bits >= E.nonFiniteBits ? .infinity : Double(E.float(fromMagnitudeBits: bits))
        }
        switch dtype {
        case .f16: return scan(F16.self)
        case .bf16: return scan(BF16.self)
        default: return scan(F32.self)
        }
    }
}
