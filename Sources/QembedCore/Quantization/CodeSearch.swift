import CQembedSIMD

/// Exact nearest-entry search in a sorted 256-entry code.
///
/// The rule (the spec, see `Blockwise8.referenceIndex`): with midpoints
/// m[i] = (code[i] + code[i+1]) / 2 in float32, the index of a scaled value s
/// is the number of midpoints strictly below s.
///
/// Fast form: [-1, 1] is cut into buckets by the top 16 bits of a monotone
/// integer key of the float. For each bucket, `lo` is the number of midpoints
/// below the bucket's smallest value; at most `span` midpoints lie inside any
/// bucket, so the index is `lo + sum_{j < span} (m[lo + j] < s)`: `span`
/// compares, branch-free. For the dynamic map span is 1.
public struct CodeSearch: @unchecked Sendable {
    public let code: [Float]
    /// 255 midpoints followed by `span + 1` copies of +inf.
    let mids: UnsafeMutablePointer<Float>
    let lo: UnsafeMutablePointer<UInt8>
    public let span: Int
    let bucketCount: Int
    /// When span <= 1: per bucket, `lo << 16 | t`, where t is the offset of the
    /// bucket's one midpoint key inside the bucket (65535 when none), so that
    /// index = lo + (offset of key(s) > t). One table load per element.
    let packed: UnsafeMutablePointer<UInt32>?
    /// The same search in an L1-sized table, when the code allows it.
    let compact: CompactCodeTable?
    /// The AVX-512 VBMI register-table search (qembed_vbmi.h), when this CPU
    /// has the instructions and the code fits the kernel.
    let vbmi: OpaquePointer?
    private let storage: Storage

    final class Storage {
        let mids: UnsafeMutablePointer<Float>, lo: UnsafeMutablePointer<UInt8>
        let packed: UnsafeMutablePointer<UInt32>?, compact: UnsafeMutablePointer<UInt32>?
        let vbmi: OpaquePointer?
        init(_ m: UnsafeMutablePointer<Float>, _ l: UnsafeMutablePointer<UInt8>, _ p: UnsafeMutablePointer<UInt32>?,
             _ c: UnsafeMutablePointer<UInt32>?, _ v: OpaquePointer?) { mids = m; lo = l; packed = p; compact = c; vbmi = v }
        deinit { mids.deallocate(); lo.deallocate(); packed?.deallocate(); compact?.deallocate(); qembed__vbmi_quant_free(vbmi) }
    }

    static var shift: UInt32 { 16 }
    /// key(-1.0); a literal so hot loops see a constant, not a lazy global.
    static var keyMin: UInt32 { 0x407F_FFFF }

    /// A monotone map of floats to UInt32 (-0 sorts just below +0).
    @inline(__always)
    static func key(_ s: Float) -> UInt32 {
        let b = s.bitPattern
        return b & 0x8000_0000 != 0 ? ~b : b | 0x8000_0000
    }

    static func value(ofKey k: UInt32) -> Float {
        Float(bitPattern: k & 0x8000_0000 != 0 ? k & 0x7FFF_FFFF : ~k)
    }

    /// Checks that `code` has 256 finite entries sorted ascending.
    public static func validate(_ code: UnsafePointer<Float>, argument: String = "code") throws(QembedError) {
        for i in 0..<256 where !code[i].isFinite {
            throw .invalid("\(argument)[\(i)] is \(code[i]) (a code must be finite)")
        }
        for i in 1..<256 where code[i] < code[i - 1] {
            throw .invalid("\(argument) is not sorted ascending: \(argument)[\(i - 1)] = \(code[i - 1]) > \(argument)[\(i)] = \(code[i])")
        }
    }

    /// Builds the search for a validated sorted code.
    public init(code: [Float]) {
        precondition(code.count == 256)
        self.code = code
        var m = [Float](repeating: 0, count: 255)
        // -0 midpoints become +0: the same value, and a key consistent with it.
        for i in 0..<255 { m[i] = (code[i] + code[i + 1]) / 2 + 0 }
        func countBelow(_ v: Float) -> Int {  // number of m < v
            var lo = 0, hi = 255
            while lo < hi { let mid = (lo + hi) / 2; if m[mid] < v { lo = mid + 1 } else { hi = mid } }
            return lo
        }
        let keyMax = CodeSearch.key(1)
        let buckets = Int((keyMax &- CodeSearch.keyMin) >> CodeSearch.shift) + 1
        let loPtr = UnsafeMutablePointer<UInt8>.allocate(capacity: buckets)
        var span = 0
        for b in 0..<buckets {
            let k0 = CodeSearch.keyMin &+ (UInt32(b) << CodeSearch.shift)
            let k1 = min(k0 &+ ((1 << CodeSearch.shift) - 1), keyMax)
            let l = countBelow(CodeSearch.value(ofKey: k0))
            let h = countBelow(CodeSearch.value(ofKey: k1))
            loPtr[b] = UInt8(l)
            span = max(span, h - l)
        }
        let midPtr = UnsafeMutablePointer<Float>.allocate(capacity: 255 + span + 1)
        for i in 0..<255 { midPtr[i] = m[i] }
        for i in 255..<(255 + span + 1) { midPtr[i] = .infinity }
        // The 16-bit bucket table only when the L1-sized one does not apply.
        let compact = CompactCodeTable(mids: m)
        var packed: UnsafeMutablePointer<UInt32>? = nil
        if span <= 1 && compact == nil {
            let p = UnsafeMutablePointer<UInt32>.allocate(capacity: buckets)
            for b in 0..<buckets {
                let start = CodeSearch.keyMin &+ (UInt32(b) << CodeSearch.shift)
                let l = Int(loPtr[b])
                var t: UInt32 = 0xFFFF
                if l < 255 {
                    let mk = CodeSearch.key(m[l])
                    if mk >= start && mk &- start < 0xFFFF { t = mk &- start }
                }
                p[b] = UInt32(l) << 16 | t
            }
            packed = p
        }
        self.packed = packed
        self.mids = midPtr
        self.lo = loPtr
        self.span = span
        self.bucketCount = buckets
        self.compact = compact
        let vbmi = VBMI.available ? code.withUnsafeBufferPointer { qembed__vbmi_quant_new($0.baseAddress!) } : nil
        self.vbmi = vbmi
        self.storage = Storage(midPtr, loPtr, packed, compact?.entries, vbmi)
    }

    /// The code index of a scaled value s in [-1, 1].
    @inline(__always)
    public func index(_ s: Float) -> UInt8 {
        // min(): a NaN (whose key lies past +1's) must not index past the table.
        let bucket = min(Int((CodeSearch.key(s) &- CodeSearch.keyMin) >> CodeSearch.shift), bucketCount - 1)
        let l = Int(lo[bucket])
        var q = l
        if span == 1 {
            q &+= mids[l] < s ? 1 : 0
        } else {
            for j in 0..<span { q &+= mids[l &+ j] < s ? 1 : 0 }
        }
        return UInt8(truncatingIfNeeded: q)
    }

    /// Indices of 8 scaled values (each in [-1, 1]); requires `packed`.
    @inline(__always)
    static func index8(_ s: SIMD8<Float>, _ table: UnsafePointer<UInt32>) -> SIMD8<UInt32> {
        let b = unsafeBitCast(s, to: SIMD8<Int32>.self)
        let sign = b &>> 31  // all ones for negative values
        let key = unsafeBitCast(b ^ (sign | Int32(bitPattern: 0x8000_0000)), to: SIMD8<UInt32>.self)
        var rel = key &- 0x407F_FFFF
        // A NaN's key lies past +1's: clamp it into the table (key(1) - keyMin)
        // so no input can index out of bounds.
        let relMax = SIMD8<UInt32>(repeating: 0xBF80_0000 &- 0x407F_FFFF)
        rel.replace(with: relMax, where: rel .> relMax)
        let bucket = rel &>> 16
        let pos = rel & 0xFFFF
        let e = SIMD8<UInt32>(table[Int(bucket[0])], table[Int(bucket[1])], table[Int(bucket[2])], table[Int(bucket[3])],
                              table[Int(bucket[4])], table[Int(bucket[5])], table[Int(bucket[6])], table[Int(bucket[7])])
        let above = unsafeBitCast(pos .> (e & 0xFFFF), to: SIMD8<UInt32>.self)  // all ones when above
        return (e &>> 16) &- above
    }

    /// Quantizes 8 values at a time while at least 8 remain: out[i] = the
    /// index of clamp(x[i] * reciprocal, -1, 1). Returns how many were done
    /// (the caller finishes the rest with `index`).
    @inline(__always)
    func quantize8<E: FloatElement>(_ e: E.Type, _ src: UnsafePointer<E.Storage>, _ count: Int, reciprocal: Float,
                                    _ out: UnsafeMutablePointer<UInt8>) -> Int {
        if let vbmi, VBMI.enabled { return quantizeVBMI(e, vbmi, src, count, reciprocal: reciprocal, out) }
        var i = 0
        let r = SIMD8<Float>(repeating: reciprocal)
        if let compact {
            // Values beyond +-1 (and NaN) land in the buckets of +-1: no clamp needed.
            while i + 8 <= count {
                CodeSearch.storeBytes(compact.index8(E.load8(src, i) * r), out + i)
                i += 8
            }
        } else if let packed {
            while i + 8 <= count {
                CodeSearch.storeBytes(CodeSearch.index8(clampUnit(E.load8(src, i) * r), packed), out + i)
                i += 8
            }
        }
        return i
    }

    /// `quantize8` through the VBMI kernel: all `count` values (float16 and
    /// bfloat16 widened 64 at a time). Returns count.
    @inline(__always)
    func quantizeVBMI<E: FloatElement>(_ e: E.Type, _ table: OpaquePointer, _ src: UnsafePointer<E.Storage>, _ count: Int,
                                       reciprocal: Float, _ out: UnsafeMutablePointer<UInt8>) -> Int {
        withFloat32Chunks(e, src, count, chunk: 64) { b, i, n in qembed__vbmi_quantize(table, b, n, reciprocal, out + i) }
        return count
    }

    /// Stores the low bytes of 8 indices (a lane loop: it compiles to two
    /// shuffles and one 8-byte store; SIMD8<UInt8>(truncatingIfNeeded:) is
    /// an out-of-line generic call in Swift 6.3).
    @inline(__always)
    static func storeBytes(_ v: SIMD8<UInt32>, _ out: UnsafeMutablePointer<UInt8>) {
        for l in 0..<8 { out[l] = UInt8(truncatingIfNeeded: v[l]) }
    }

    /// Cached searches for the two dynamic maps.
    public static let signedDynamic = CodeSearch(code: QuantMap.signedDynamic)
    public static let unsignedDynamic = CodeSearch(code: QuantMap.unsignedDynamic)

    /// The search for a caller-given code: a cached one when the code equals a
    /// dynamic map, else a new one.
    public static func forCode(_ code: UnsafePointer<Float>?) -> CodeSearch {
        guard let code else { return signedDynamic }
        let buf = UnsafeBufferPointer(start: code, count: 256)
        if buf.elementsEqual(QuantMap.signedDynamic, by: { $0.bitPattern == $1.bitPattern }) { return signedDynamic }
        if buf.elementsEqual(QuantMap.unsignedDynamic, by: { $0.bitPattern == $1.bitPattern }) { return unsignedDynamic }
        return CodeSearch(code: Array(buf))
    }
}
