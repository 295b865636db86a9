/// The exact nearest-entry search of `CodeSearch` in a table small enough to
/// stay in L1 (11 KiB for the signed dynamic map, 23 KiB for the unsigned
/// one, against 127 KiB each for the 16-bit bucket table), for codes whose midpoints all lie away from zero.
///
/// With 2^e0 below the smallest |midpoint|, every |s| < 2^e0 has the index
/// of 0, so only magnitudes in [2^e0, 1] need buckets: the bucket of s is
/// (sign, the bits of |s| above 2^e0 without their low `shift` bits). Each
/// side has `u` buckets; the last holds exactly 1.0 (and, clamped, anything
/// larger or NaN, so no input indexes out of bounds); the first also holds
/// the magnitudes below 2^e0. When at most one midpoint lies in any bucket
/// (checked while building: `m` mantissa bits are added until it holds),
/// an entry `lo << 24 | t` gives the index: lo (the number of midpoints
/// below the bucket) plus 1 when the position of s inside the bucket, in
/// increasing order of s, exceeds t (the midpoint's position, or the last
/// position when the bucket holds none).
struct CompactCodeTable {
    let entries: UnsafeMutablePointer<UInt32>
    let count: Int
    let a0: UInt32      // bits of 2^e0
    let span: UInt32    // bits(1.0) - a0
    let shift: UInt32   // 23 - m
    let mask: UInt32    // (1 << shift) - 1
    let u: UInt32       // buckets per side

    /// nil when the midpoints come too close to 0 or need too fine buckets.
    init?(mids: [Float]) {
        let smallest = mids.map { abs($0) }.min() ?? 0
        guard smallest > 0 else { return nil }
        // 2^e0 strictly below the smallest |midpoint|.
        var e0 = Int(smallest.exponent)
        if smallest == Float(sign: .plus, exponent: smallest.exponent, significand: 1) { e0 -= 1 }
        guard e0 >= -126 && e0 < 0 else { return nil }
        let a0 = UInt32(127 + e0) << 23
        let span = Float(1).bitPattern - a0
        func countBelow(_ v: Float) -> Int {
            var lo = 0, hi = mids.count
            while lo < hi { let mid = (lo + hi) / 2; if mids[mid] < v { lo = mid + 1 } else { hi = mid } }
            return lo
        }
        for m in 4...10 {
            let shift = UInt32(23 - m), mask = (UInt32(1) << shift) - 1
            let u = (span >> shift) + 1
            let count = 2 * Int(u)
            guard count <= 16384 else { return nil }
            var table = [UInt32](repeating: 0, count: count)
            var fits = true
            for negative in [false, true] where fits {
                for ub in 0..<u {
                    let lowMag = a0 + (ub << shift), highMag = min(lowMag + mask, a0 + span)
                    let small = negative ? -Float(bitPattern: highMag) : (ub == 0 ? 0 : Float(bitPattern: lowMag))
                    let large = negative ? (ub == 0 ? -0.0 : -Float(bitPattern: lowMag)) : Float(bitPattern: highMag)
                    let lo = countBelow(small), hi = countBelow(large)
                    guard hi - lo <= 1 else { fits = false; break }
                    var t = mask
                    if hi == lo + 1 {
                        let d = (mids[lo].bitPattern & 0x7FFF_FFFF) - a0
                        precondition(d >> shift == ub, "a midpoint outside its bucket")
                        t = negative ? mask - (d & mask) : d & mask
                    }
                    let bucket = negative ? Int(u - 1 - ub) : Int(u + ub)
                    table[bucket] = UInt32(lo) << 24 | t
                }
            }
            guard fits else { continue }
            let p = UnsafeMutablePointer<UInt32>.allocate(capacity: count)
            p.initialize(from: table, count: count)
            entries = p
            self.count = count
            self.a0 = a0; self.span = span; self.shift = shift; self.mask = mask; self.u = u
            return
        }
        return nil
    }

    /// Indices of 8 scaled values (any float, NaN included; meant for [-1, 1]).
    @inline(__always)
    func index8(_ s: SIMD8<Float>) -> SIMD8<UInt32> {
        // Signed lanes and vector operands throughout: every value stays
        // below 2^31, and AVX2 compares signed lanes in one instruction.
        let bits = unsafeBitCast(s, to: SIMD8<Int32>.self)
        let zero = SIMD8<Int32>(repeating: 0), spanV = SIMD8<Int32>(repeating: Int32(span))
        let maskV = SIMD8<Int32>(repeating: Int32(mask))
        var d = (bits & 0x7FFF_FFFF) &- SIMD8<Int32>(repeating: Int32(a0))
        d.replace(with: zero, where: d .< zero)
        d.replace(with: spanV, where: d .> spanV)
        let neg = bits &>> 31  // all ones for a set sign bit
        let bucket = SIMD8<Int32>(repeating: Int32(u)) &+ ((d &>> SIMD8<Int32>(repeating: Int32(shift))) ^ neg)
        let pos = (d & maskV) ^ (neg & maskV)
        let t = entries
        let e = SIMD8<UInt32>(t[Int(bucket[0])], t[Int(bucket[1])], t[Int(bucket[2])], t[Int(bucket[3])],
                              t[Int(bucket[4])], t[Int(bucket[5])], t[Int(bucket[6])], t[Int(bucket[7])])
        let above = pos .> unsafeBitCast(e & 0xFF_FFFF, to: SIMD8<Int32>.self)
        return (e &>> 24) &- unsafeBitCast(zero.replacing(with: -1, where: above), to: SIMD8<UInt32>.self)
    }
}
