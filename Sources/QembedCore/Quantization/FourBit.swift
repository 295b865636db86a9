import CQembedSIMD

/// 4-bit blockwise quantization (bitsandbytes quantize_4bit / dequantize_4bit,
/// FP4 and NF4) with the exact nearest-midpoint rule over the sorted levels.
/// Packing: element 2k in the high nibble of byte k, element 2k+1 in the low.
public enum FourBit {
    /// The blocksizes of bitsandbytes' 4-bit kernels: the one list every
    /// layer (core, C API, command) checks against.
    public static let blocksizes: Set<Int> = [32, 64, 128, 256, 512, 1024, 2048, 4096]
    /// "32, 64, ..., 4096", for messages.
    public static var blocksizeList: String { blocksizes.sorted().map(String.init).joined(separator: ", ") }

    /// Throws `.unsupported` naming the accepted blocksizes.
    public static func checkBlocksize(_ b: Int64, argument: String = "blocksize") throws(QembedError) {
        guard b >= 0, b <= 1 << 20, blocksizes.contains(Int(b)) else {
            throw .unsupported("\(argument): \(b) is not one of \(blocksizeList)")
        }
    }

    /// Levels sorted ascending (stable, as torch.argsort on the CPU), the
    /// 15 midpoints between them, and the sorted-position -> nibble map.
    public struct Levels: @unchecked Sendable {
        public let code: [Float]       // 16 levels in nibble order
        public let sortedMids: [Float] // 15 midpoints
        public let order: [UInt8]      // sorted position -> nibble
        let mids16: SIMD16<Float>      // sortedMids, padded with +inf
        let order16: SIMD16<UInt8>
        let identityOrder: Bool
        /// mids16 and order16 in memory for the AVX-512 kernel (process lifetime).
        let kernelMids: UnsafeMutablePointer<Float>
        let kernelOrder: UnsafeMutablePointer<UInt8>

        init(_ type: FourBitType) {
            let c = QuantMap.fourBit(type)
            let idx = (0..<16).sorted { c[$0] < c[$1] || (c[$0] == c[$1] && $0 < $1) }
            code = c
            order = idx.map { UInt8($0) }
            let mids = (0..<15).map { (c[idx[$0]] + c[idx[$0 + 1]]) / 2 }
            sortedMids = mids
            var m16 = SIMD16<Float>(repeating: .infinity), o16 = SIMD16<UInt8>()
            for j in 0..<15 { m16[j] = mids[j] }
            for j in 0..<16 { o16[j] = UInt8(idx[j]) }
            mids16 = m16
            order16 = o16
            identityOrder = idx == Array(0..<16)
            kernelMids = .allocate(capacity: 16)
            kernelOrder = .allocate(capacity: 16)
            for j in 0..<16 { kernelMids[j] = m16[j]; kernelOrder[j] = o16[j] }
        }

        /// Nibble of a scaled value: order[#midpoints < s].
        @inline(__always)
        public func nibble(_ s: Float) -> UInt8 {
            var c = 0
            for m in sortedMids where m < s { c += 1 }
            return order[c]
        }
    }

    public static let nf4 = Levels(.nf4)
    public static let fp4 = Levels(.fp4)
    public static func levels(_ t: FourBitType) -> Levels { t == .nf4 ? nf4 : fp4 }

    public static func packedBytes(_ n: Int) -> Int { (n + 1) / 2 }

    /// Quantizes n elements into `packed` ((n+1)/2 bytes) and `absmax`.
    /// Nothing is written when it throws.
    public static func quantize(_ A: UnsafeRawPointer, dtype: DType, n: Int, blocksize: Int, type: FourBitType,
                                packed: UnsafeMutablePointer<UInt8>, absmax: UnsafeMutablePointer<Float>) throws(QembedError) {
        try withFloatElement(dtype) { (e) throws(QembedError) in
            try quantize(e, A, n: n, blocksize: blocksize, levels: levels(type), packed: packed, absmax: absmax)
        }
    }

    static func quantize<E: FloatElement>(_ e: E.Type, _ A: UnsafeRawPointer, n: Int, blocksize: Int, levels: Levels,
                                          packed: UnsafeMutablePointer<UInt8>, absmax: UnsafeMutablePointer<Float>) throws(QembedError) {
        let src = A.assumingMemoryBound(to: E.Storage.self)
        try Absmax.quantizeBlocks(e, src, n: n, blocksize: blocksize, absmax: absmax) { _, lo, count, scale in
            quantizeBlock(e, src + lo, count, scale, levels, packed + lo / 2)
        }
    }

    /// One block starting at an even element; writes ceil(count/2) bytes.
    @inline(__always)
    static func quantizeBlock<E: FloatElement>(_ e: E.Type, _ src: UnsafePointer<E.Storage>, _ count: Int,
                                               _ scale: BlockScale, _ lv: Levels, _ out: UnsafeMutablePointer<UInt8>) {
        var i = 0
        if !scale.divides, VBMI.enabled {
            // Chunks of 256 (even: the pairs of nibbles stay whole).
            withFloat32Chunks(e, src, count, chunk: 256) { b, o, n in
                qembed__vbmi_quantize_4bit(lv.kernelMids, lv.kernelOrder, b, n, scale.reciprocal, out + o / 2)
            }
            return
        }
        if !scale.divides {
            let r = SIMD8<Float>(repeating: scale.reciprocal)
            let m = lv.mids16
            let identity = lv.identityOrder
            while i + 8 <= count {
                let s = clampUnit(E.load8(src, i) * r)
                var cnt = SIMD8<Int32>(repeating: 0)
                for j in 0..<15 {
                    cnt &-= unsafeBitCast(SIMD8<Float>(repeating: m[j]) .< s, to: SIMD8<Int32>.self)
                }
                var q = SIMD8<UInt32>(truncatingIfNeeded: cnt)
                if !identity {
                    let o = lv.order16
                    q = SIMD8<UInt32>(UInt32(o[Int(q[0])]), UInt32(o[Int(q[1])]), UInt32(o[Int(q[2])]), UInt32(o[Int(q[3])]),
                                      UInt32(o[Int(q[4])]), UInt32(o[Int(q[5])]), UInt32(o[Int(q[6])]), UInt32(o[Int(q[7])]))
                }
                // Pair lanes (2k, 2k+1) into bytes: high nibble first.
                let even = SIMD4<UInt32>(q[0], q[2], q[4], q[6]), odd = SIMD4<UInt32>(q[1], q[3], q[5], q[7])
                let bytes = SIMD4<UInt8>(truncatingIfNeeded: (even &<< 4) | odd)
                UnsafeMutableRawPointer(out + i / 2).storeBytes(of: bytes, as: SIMD4<UInt8>.self)
                i += 8
            }
        }
        while i < count {
            let hi = lv.nibble(scale.scaled(E.load(src, i)))
            let lo = i + 1 < count ? lv.nibble(scale.scaled(E.load(src, i + 1))) : lv.nibble(0)
            out[i / 2] = hi << 4 | lo
            i += 2
        }
    }

    /// out[i] = code[nibble i] * absmax[i / blocksize] in float32, stored as `dtype`.
    public static func dequantize(_ packed: UnsafePointer<UInt8>, n: Int, absmax: UnsafePointer<Float>,
                                  blocksize: Int, type: FourBitType, out: UnsafeMutableRawPointer, dtype: DType) throws(QembedError) {
        try withFloatElement(dtype) { (e) throws(QembedError) in
            dequantize(e, packed, n: n, absmax: absmax, blocksize: blocksize, code: levels(type).code, out: out)
        }
    }

    static func dequantize<E: FloatElement>(_ e: E.Type, _ packed: UnsafePointer<UInt8>, n: Int, absmax: UnsafePointer<Float>,
                                            blocksize: Int, code: [Float], out: UnsafeMutableRawPointer) {
        let dst = out.assumingMemoryBound(to: E.Storage.self)
        let nblocks = ceilDiv(n, blocksize)
        let streaming = StreamedOutput.streams(bytes: n * MemoryLayout<E.Storage>.stride)
        let avx2 = E.self == F32.self && qembed__avx2_enabled() != 0
        code.withUnsafeBufferPointer { cb in
            let c = cb.baseAddress!
            Parallel.forEachChunk(nblocks, grain: max(1, 16384 / blocksize)) { range in
                let elements = range.lowerBound * blocksize ..< min(n, range.upperBound * blocksize)
                StreamedOutput.write(dst, elements, streaming: streaming) { from, count, o in
                    // Pieces and blocks start at even elements (every blocksize is even).
                    forEachBlockRun(from, count, blocksize: blocksize) { b, i, stop in
                        if avx2 && stop - i >= 8 {
                            let pairs = (stop - i) / 2
                            let d = UnsafeMutableRawPointer(o + (i - from)).assumingMemoryBound(to: Float.self)
                            qembed__4bit_run_avx2(packed + i / 2, pairs, c, absmax[b], 0, Int32(QEMBED__4BIT_STORE), d)
                            if (stop - i) & 1 == 1 { E.store(c[Int(packed[stop / 2] >> 4)] * absmax[b], o, stop - 1 - from) }
                        } else {
                            dequantizeRun(e, packed, from: i, count: stop - i, absmax: absmax[b], code: c, dst: o - from)
                        }
                    }
                }
            }
        }
    }

    /// Dequantizes `count` elements starting at even element `from`, all of
    /// one block with scale `absmax`, into dst[from...].
    @inline(__always)
    public static func dequantizeRun<E: FloatElement>(_ e: E.Type, _ packed: UnsafePointer<UInt8>, from: Int, count: Int,
                                                      absmax: Float, code: UnsafePointer<Float>,
                                                      dst: UnsafeMutablePointer<E.Storage>) {
        let p = packed + from / 2
        let o = from
        let pairs = count / 2
        for k in 0..<pairs {
            let byte = p[k]
            E.store(code[Int(byte >> 4)] * absmax, dst, o + 2 * k)
            E.store(code[Int(byte & 15)] * absmax, dst, o + 2 * k + 1)
        }
        if count & 1 == 1 {
            E.store(code[Int(p[pairs] >> 4)] * absmax, dst, o + count - 1)
        }
    }
}

/// The scalar specification of 4-bit quantization.
public enum FourBitReference {
    public static func quantize(_ x: [Float], blocksize: Int, type: FourBitType) -> (packed: [UInt8], absmax: [Float]) {
        let lv = FourBit.levels(type)
        let n = x.count
        var absmax = [Float](repeating: 0, count: ceilDiv(n, blocksize))
        var nib = [UInt8](repeating: lv.nibble(0), count: n + (n & 1))
        for b in 0..<absmax.count {
            let r = (b * blocksize)..<min(n, (b + 1) * blocksize)
            var m: Float = 0
            for i in r { m = max(m, abs(x[i])) }
            absmax[b] = m
            let scale = BlockScale(absmax: m)
            for i in r { nib[i] = lv.nibble(scale.scaled(x[i])) }
        }
        let packed = (0..<(nib.count / 2)).map { nib[2 * $0] << 4 | nib[2 * $0 + 1] }
        return (packed, absmax)
    }
}
