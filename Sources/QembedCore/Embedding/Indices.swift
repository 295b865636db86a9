/// A caller's index array: int32 or int64 values, validated against a table size.
public struct Indices {
    public let base: UnsafeRawPointer
    public let is64: Bool
    public let count: Int

    public init(_ base: UnsafeRawPointer, dtype: DType, count: Int) throws(QembedError) {
        guard dtype == .i32 || dtype == .i64 else {
            throw .unsupported("index_dtype: \(dtype.name) is not supported (use i32 or i64)")
        }
        self.base = base
        self.is64 = dtype == .i64
        self.count = count
    }

    /// A view of values already known to be i32 (is64 false) or i64.
    public init(unchecked base: UnsafeRawPointer, is64: Bool, count: Int) {
        self.base = base
        self.is64 = is64
        self.count = count
    }

    /// The first `n` values.
    public func prefix(_ n: Int) -> Indices { Indices(unchecked: base, is64: is64, count: n) }

    /// Values start ..< start + n.
    public func slice(_ start: Int, _ n: Int) -> Indices {
        Indices(unchecked: base + start * (is64 ? 8 : 4), is64: is64, count: n)
    }

    @inline(__always)
    public subscript(_ k: Int) -> Int {
        is64 ? Int(base.load(fromByteOffset: k * 8, as: Int64.self)) : Int(base.load(fromByteOffset: k * 4, as: Int32.self))
    }

    /// Throws `.outOfRange` naming the first index outside [0, rows).
    /// One branch-free pass (a maximum over the values read as unsigned,
    /// which vectorizes and catches negative values too), then a search for
    /// the first bad one only when there is one.
    public func validate(rows: Int) throws(QembedError) {
        var top: UInt64 = 0  // the largest value read as unsigned: a negative one is above any row count
        if is64 {
            let p = base.assumingMemoryBound(to: Int64.self)
            for k in 0..<count { top = max(top, UInt64(bitPattern: p[k])) }
        } else {
            let p = base.assumingMemoryBound(to: Int32.self)
            for k in 0..<count { top = max(top, UInt64(bitPattern: Int64(p[k]))) }
        }
        guard count > 0 && top >= UInt64(max(rows, 0)) else { return }
        for k in 0..<count {
            let i = self[k]
            if i < 0 || i >= rows {
                throw QembedError(.outOfRange, "indices[\(k)] = \(i) is out of range for an embedding table of \(rows) rows")
            }
        }
    }

    /// Sorted distinct indices (all validated to lie in [0, rows)): a bitmap
    /// pass when the table is small next to the batch, else a sort.
    public func distinct(rows: Int) -> [Int] {
        if rows <= 64 * count {
            var bits = [UInt64](repeating: 0, count: (rows + 63) / 64)
            for k in 0..<count { let i = self[k]; bits[i >> 6] |= 1 << UInt64(i & 63) }
            var out: [Int] = []
            out.reserveCapacity(min(count, rows))
            for (w, word) in bits.enumerated() where word != 0 {
                var m = word
                while m != 0 { out.append(w << 6 | m.trailingZeroBitCount); m &= m - 1 }
            }
            return out
        }
        var v = (0..<count).map { self[$0] }
        v.sort()
        var out: [Int] = []
        out.reserveCapacity(v.count)
        for x in v where out.last != x { out.append(x) }
        return out
    }
}
