import CQembedSIMD

/// Rows of a table as float32 values, read straight into a reduction: a
/// float table, int8 rows with their scales, or packed 4-bit blocks. The row
/// values are those the layer's lookups produce before any rounding to an
/// output dtype (quantized: code x scale in float32).
protocol BagRowSource {
    var dim: Int { get }
    /// Bytes of one row in the table (for prefetch distances).
    var rowBytes: Int { get }
    /// dst[j] = row(i)[j], j < dim.
    func load(_ i: Int, _ dst: UnsafeMutablePointer<Float>)
    /// acc[j] += row(i)[j] (w == 1) or row(i)[j] * w, j < dim.
    func add(_ i: Int, _ w: Float, _ acc: UnsafeMutablePointer<Float>)
    /// acc[j] = row(i)[j] (first) or the larger of the two (earlier wins ties).
    func maximum(_ i: Int, first: Bool, _ acc: UnsafeMutablePointer<Float>)
    func prefetch(_ i: Int)
    /// out[r] = <q, row(r0 + r)> for r < n in the scoring order
    /// (Scoring.swift) straight from the table, when this source has a fused
    /// kernel for it here (true); else false and nothing written.
    func dots(_ r0: Int, _ n: Int, _ q: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>) -> Bool
    /// The rows as the AVX-512 bag kernel reads them (qembed_bag.h), when it
    /// has a form for them; else nil.
    var bagKernelRows: qembed__bag_rows? { get }
    /// The table itself when its rows are float32 values of a multiple of 8
    /// (scoring reads them in place); else nil.
    var floatRows: UnsafePointer<Float>? { get }
}

extension BagRowSource {
    @inline(__always) func dots(_ r0: Int, _ n: Int, _ q: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>) -> Bool { false }
    var bagKernelRows: qembed__bag_rows? { nil }
    var floatRows: UnsafePointer<Float>? { nil }
}

extension qembed__bag_rows {
    init(kind: Int32, dim: Int, data: UnsafeRawPointer, scales: UnsafePointer<Float>?) {
        self.init(kind: kind, dim: dim, data: data, scales: scales, blocksize: 0, code: nil, qabsmax: nil,
                  nested_code: nil, nested_absmax: nil, nested_blocksize: 0, offset: 0)
    }
}

struct FloatRows<E: FloatElement>: BagRowSource {
    let base: UnsafePointer<E.Storage>
    let dim: Int
    var rowBytes: Int { dim * MemoryLayout<E.Storage>.stride }

    @inline(__always) func add(_ i: Int, _ w: Float, _ acc: UnsafeMutablePointer<Float>) {
        let r = base + i * dim
        var j = 0
        if w == 1 {
            while j + 8 <= dim {
                F32.store8(F32.load8(acc, j) + E.load8(r, j), acc, j); j += 8
            }
            while j < dim { acc[j] += E.load(r, j); j += 1 }
        } else {
            let ws = SIMD8<Float>(repeating: w)
            while j + 8 <= dim {
                F32.store8(F32.load8(acc, j) + E.load8(r, j) * ws, acc, j); j += 8
            }
            while j < dim { acc[j] += E.load(r, j) * w; j += 1 }
        }
    }

    @inline(__always) func load(_ i: Int, _ dst: UnsafeMutablePointer<Float>) {
        let r = base + i * dim
        var j = 0
        while j + 8 <= dim { F32.store8(E.load8(r, j), dst, j); j += 8 }
        while j < dim { dst[j] = E.load(r, j); j += 1 }
    }

    @inline(__always) func maximum(_ i: Int, first: Bool, _ acc: UnsafeMutablePointer<Float>) {
        if first { load(i, acc); return }
        let r = base + i * dim
        var j = 0
        while j + 8 <= dim {
            let v = E.load8(r, j), a = F32.load8(acc, j)
            F32.store8(a.replacing(with: v, where: v .> a), acc, j); j += 8
        }
        while j < dim { let v = E.load(r, j); if v > acc[j] { acc[j] = v }; j += 1 }
    }

    @inline(__always) func prefetch(_ i: Int) {
        let bytes = dim * MemoryLayout<E.Storage>.stride
        if bytes <= prefetchMaxRowBytes { qembed__prefetch(base + i * dim, bytes) }
    }

    var bagKernelRows: qembed__bag_rows? {
        E.self == F32.self ? qembed__bag_rows(kind: Int32(QEMBED__BAG_F32), dim: dim, data: base, scales: nil) : nil
    }

    var floatRows: UnsafePointer<Float>? {
        E.self == F32.self && dim % 8 == 0 ? UnsafeRawPointer(base).assumingMemoryBound(to: Float.self) : nil
    }
}

/// Embedding8bit rows: v = q * (SCB / 127).
struct Int8Rows: BagRowSource {
    let q: UnsafePointer<Int8>
    let scb: UnsafePointer<Float>
    let dim: Int
    var rowBytes: Int { dim + 4 }

    @inline(__always) private func load8(_ r: UnsafePointer<Int8>, _ j: Int, _ s: SIMD8<Float>) -> SIMD8<Float> {
        qembed__i8_load8(r + j) * s
    }

    @inline(__always) func add(_ i: Int, _ w: Float, _ acc: UnsafeMutablePointer<Float>) {
        let r = q + i * dim, s = scb[i] / 127
        let sv = SIMD8<Float>(repeating: s)
        var j = 0
        if w == 1 {
            while j + 8 <= dim { F32.store8(F32.load8(acc, j) + load8(r, j, sv), acc, j); j += 8 }
            while j < dim { acc[j] += Float(r[j]) * s; j += 1 }
        } else {
            let ws = SIMD8<Float>(repeating: w)
            while j + 8 <= dim { F32.store8(F32.load8(acc, j) + load8(r, j, sv) * ws, acc, j); j += 8 }
            while j < dim { acc[j] += Float(r[j]) * s * w; j += 1 }
        }
    }

    @inline(__always) func load(_ i: Int, _ dst: UnsafeMutablePointer<Float>) { maximum(i, first: true, dst) }

    @inline(__always) func maximum(_ i: Int, first: Bool, _ acc: UnsafeMutablePointer<Float>) {
        let r = q + i * dim, s = scb[i] / 127
        let sv = SIMD8<Float>(repeating: s)
        var j = 0
        while j + 8 <= dim {
            let v = load8(r, j, sv)
            if first { F32.store8(v, acc, j) } else { let a = F32.load8(acc, j); F32.store8(a.replacing(with: v, where: v .> a), acc, j) }
            j += 8
        }
        while j < dim { let v = Float(r[j]) * s; if first || v > acc[j] { acc[j] = v }; j += 1 }
    }

    @inline(__always) func prefetch(_ i: Int) {
        if dim <= prefetchMaxRowBytes { qembed__prefetch(q + i * dim, dim) }
        qembed__prefetch(scb + i, 4)
    }

    /// One query straight from the table (AVX2, dim a multiple of 8).
    @inline(__always) func dots(_ r0: Int, _ n: Int, _ x: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>) -> Bool {
        guard dim % 8 == 0, n >= 1, qembed__avx2_enabled() != 0 else { return false }
        qembed__i8_rows_dot_avx2(q, scb, r0, n, dim, x, out)
        return true
    }

    var bagKernelRows: qembed__bag_rows? { qembed__bag_rows(kind: Int32(QEMBED__BAG_I8), dim: dim, data: q, scales: scb) }
}

/// Embedding4bit rows: element e of the flat table is code[nibble e] x
/// absmax(e / blocksize), nibble e the high half of byte e / 2 when e is even.
struct FourBitRows: BagRowSource {
    let table: QuantizedEmbedding
    let packed: UnsafePointer<UInt8>
    let code: UnsafePointer<Float>
    let dim: Int
    var rowBytes: Int { (dim + 1) / 2 + 4 }

    /// Applies `op` to row i's values: whole pairs of each block run through
    /// the AVX2 kernel when it runs here, single nibbles at run edges (and
    /// everything otherwise) by the same scalar rule.
    @inline(__always) private func run(_ i: Int, _ op: Int32, _ w: Float, _ dst: UnsafeMutablePointer<Float>) {
        let start = i * dim, bs = table.blocksize
        if qembed__avx2_enabled() != 0 {
            // One call per row: the row's block scales, from the table or
            // decoded from nested statistics into a small buffer.
            let b0 = start / bs
            if let s = table.scales {
                qembed__4bit_row_avx2(packed, start, dim, bs, s + b0, code, w, op, dst)
            } else {
                let nb = (start + dim - 1) / bs - b0 + 1
                withUnsafeTemporaryAllocation(of: Float.self, capacity: nb) { t in
                    for b in 0..<nb { t[b] = table.absmax(b0 + b) }
                    qembed__4bit_row_avx2(packed, start, dim, bs, t.baseAddress!, code, w, op, dst)
                }
            }
            return
        }
        var j = 0
        while j < dim {
            let b = (start + j) / bs
            let runEnd = min(dim, (b + 1) * bs - start)
            let a = table.absmax(b)
            var e = start + j
            if e & 1 == 1 { apply(op, code[Int(packed[e >> 1] & 15)] * a, w, dst + j); j += 1; e += 1 }
            let pairs = (runEnd - j) / 2
            for t in 0..<pairs {
                let byte = packed[(e >> 1) + t]
                apply(op, code[Int(byte >> 4)] * a, w, dst + j + 2 * t)
                apply(op, code[Int(byte & 15)] * a, w, dst + j + 2 * t + 1)
            }
            j += 2 * pairs; e += 2 * pairs
            if j < runEnd { apply(op, code[Int(packed[e >> 1] >> 4)] * a, w, dst + j); j += 1 }
        }
    }

    @inline(__always) private func apply(_ op: Int32, _ v: Float, _ w: Float, _ d: UnsafeMutablePointer<Float>) {
        switch op {
        case Int32(QEMBED__4BIT_STORE): d.pointee = v
        case Int32(QEMBED__4BIT_ADD): d.pointee += v
        case Int32(QEMBED__4BIT_ADD_WEIGHTED): d.pointee += v * w
        default: if v > d.pointee { d.pointee = v }
        }
    }

    @inline(__always) func load(_ i: Int, _ dst: UnsafeMutablePointer<Float>) { run(i, Int32(QEMBED__4BIT_STORE), 1, dst) }

    @inline(__always) func dots(_ r0: Int, _ n: Int, _ q: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>) -> Bool {
        let bs = table.blocksize
        guard dim % 8 == 0, bs >= 8, bs & (bs - 1) == 0, n >= 1, qembed__avx2_enabled() != 0 else { return false }
        let lg = bs.trailingZeroBitCount, b0 = (r0 * dim) >> lg  // (Swift: >> binds tighter than *)
        if let s = table.scales {
            qembed__4bit_rows_dot_avx2(packed, r0, n, dim, Int32(lg), s + b0, code, q, out)
        } else {
            // nested statistics: the rows' block scales decoded first
            let nb = (((r0 + n) * dim - 1) >> lg) - b0 + 1
            withUnsafeTemporaryAllocation(of: Float.self, capacity: nb) { t in
                for b in 0..<nb { t[b] = table.absmax(b0 + b) }
                qembed__4bit_rows_dot_avx2(packed, r0, n, dim, Int32(lg), t.baseAddress!, code, q, out)
            }
        }
        return true
    }

    @inline(__always) func add(_ i: Int, _ w: Float, _ acc: UnsafeMutablePointer<Float>) {
        if w == 1 { run(i, Int32(QEMBED__4BIT_ADD), 1, acc) } else { run(i, Int32(QEMBED__4BIT_ADD_WEIGHTED), w, acc) }
    }

    @inline(__always) func maximum(_ i: Int, first: Bool, _ acc: UnsafeMutablePointer<Float>) {
        run(i, Int32(first ? QEMBED__4BIT_STORE : QEMBED__4BIT_MAX), 1, acc)
    }

    @inline(__always) func prefetch(_ i: Int) {
        let bytes = (dim + 1) / 2
        if bytes <= prefetchMaxRowBytes { qembed__prefetch(packed + i * dim / 2, bytes) }
        let b = i * dim / table.blocksize
        if let qa = table.qabsmax { qembed__prefetch(qa + b, 1) } else { qembed__prefetch(table.scales! + b, 4) }
    }

    var bagKernelRows: qembed__bag_rows? {
        qembed__bag_rows(kind: Int32(QEMBED__BAG_4BIT), dim: dim, data: packed, scales: table.scales, blocksize: table.blocksize,
                         code: code, qabsmax: table.qabsmax, nested_code: table.nestedCode, nested_absmax: table.nestedAbsmax,
                         nested_blocksize: table.nestedBlocksize, offset: table.offset)
    }
}

/// A quantized table made from f16/bf16 weights: its rows as its lookups
/// return them, rounded to that dtype (the reference "dequantize, then
/// reduce"), through a row buffer.
struct RoundedRows<Base: BagRowSource>: BagRowSource {
    let base: Base
    let dtype: DType
    var dim: Int { base.dim }
    var rowBytes: Int { base.rowBytes }

    @inline(__always) func load(_ i: Int, _ dst: UnsafeMutablePointer<Float>) {
        base.load(i, dst)
        for j in 0..<dim { dst[j] = loadRounded(dst[j], dtype) }
    }

    @inline(__always) func add(_ i: Int, _ w: Float, _ acc: UnsafeMutablePointer<Float>) {
        withUnsafeTemporaryAllocation(of: Float.self, capacity: dim) { t in
            load(i, t.baseAddress!)
            if w == 1 { for j in 0..<dim { acc[j] += t[j] } } else { for j in 0..<dim { acc[j] += t[j] * w } }
        }
    }

    @inline(__always) func maximum(_ i: Int, first: Bool, _ acc: UnsafeMutablePointer<Float>) {
        if first { load(i, acc); return }
        withUnsafeTemporaryAllocation(of: Float.self, capacity: dim) { t in
            load(i, t.baseAddress!)
            for j in 0..<dim where t[j] > acc[j] { acc[j] = t[j] }
        }
    }

    @inline(__always) func prefetch(_ i: Int) { base.prefetch(i) }
}

/// Rows fetched ahead in bag reductions: about this many bytes in flight
/// (2 to 16 rows). Zen 3, 2 threads, two kernel copies timed alternately:
/// f32 rows of 512 bytes 5-9% faster 16 rows ahead than 4 (2048 bytes);
/// int8 (132-byte) and NF4 rows flat from 15 to 62 rows.
let bagPrefetchBytes = 8192

/// Indices per block of bags that the threads claim in turn
/// (Parallel.forEachBlock). Zen 3, 2 threads, 250000x128, paired medians
/// against torch / FBGEMM over 3 runs, fixed halves -> 2048-index blocks:
/// f32 4096 bags of 40 0.97-1.04x -> 1.08-1.21x, 32768 bags of 5
/// 0.94-0.99x -> 1.01-1.09x; int8 within the noise. 8192 gained less.
let bagBlockRows = 2048

/// out[b] = the bags' reductions (see Bags) over `rows`, stored as outDtype.
func reduceBags<R: BagRowSource>(_ rows: R, _ bags: Bags, out: UnsafeMutableRawPointer, outDtype: DType) {
    let dim = rows.dim
    let pad = bags.paddingIdx ?? -1
    let direct = outDtype == .f32
    // The AVX-512 kernel, or else the AVX2 one, reduces a range of bags per
    // call with the accumulators in registers (float32 weights only).
    var kernel = rows.bagKernelRows
    var wide = false
    if kernel != nil {
        wide = qembed__bag512_supported(&kernel!) != 0
        if (!wide && qembed__bag256_supported(&kernel!) == 0) || (bags.weights != nil && bags.weightsDtype != .f32) {
            kernel = nil
        }
    }
    let kernelWeights = bags.weights?.assumingMemoryBound(to: Float.self)
    let bounds = qembed__bag_bounds(offsets: bags.offsets, fixed: bags.fixedSize, num_bags: bags.numBags,
                                    count: bags.indices.count)
    let kernelMode: Int32 = bags.mode == .max ? 2 : (bags.mode == .mean ? 1 : 0)
    // Blocks of about bagBlockRows indices, claimed by the threads in turn.
    let block = max(1, bagBlockRows * bags.numBags / max(1, bags.indices.count))
    Parallel.forEachBlock(bags.numBags, block: block, grain: max(1, bags.numBags * 16384 / max(1, bags.bagged * dim))) { range in
        let scratch = direct ? nil : UnsafeMutablePointer<Float>.allocate(capacity: dim)
        let last = bags.end(range.upperBound - 1)  // rows are fetched ahead across bags of the block
        let bagPrefetch = max(2, min(16, bagPrefetchBytes / max(1, rows.rowBytes)))
        defer { scratch?.deallocate() }
        if var k = kernel {
            var bb = bounds
            // One call for the block's bags (straight into a float32 output), or one per bag through scratch.
            let reduce = wide ? qembed__bag512_reduce_bags : qembed__bag256_reduce_bags
            let is64: Int32 = bags.indices.is64 ? 1 : 0
            if let scratch {
                for b in range {
                    reduce(&k, bags.indices.base, is64, &bb, b, b + 1, bagPrefetch, last, pad, kernelWeights,
                           kernelMode, scratch)
                    storeFloats(scratch, dim, out + b * dim * outDtype.size, outDtype)
                }
            } else {
                reduce(&k, bags.indices.base, is64, &bb, range.lowerBound, range.upperBound, bagPrefetch, last, pad,
                       kernelWeights, kernelMode, out.assumingMemoryBound(to: Float.self) + range.lowerBound * dim)
            }
            return
        }
        for b in range {
            let acc = scratch ?? out.assumingMemoryBound(to: Float.self) + b * dim
            let lo = bags.start(b), hi = bags.end(b)
            var n = 0
            if bags.mode == .max {
                for k in lo..<hi {
                    if k + bagPrefetch < last { rows.prefetch(bags.indices[k + bagPrefetch]) }
                    let i = bags.indices[k]
                    if i == pad { continue }
                    rows.maximum(i, first: n == 0, acc)
                    n += 1
                }
                if n == 0 { acc.update(repeating: 0, count: dim) }
            } else {
                acc.update(repeating: 0, count: dim)
                for k in lo..<hi {
                    if k + bagPrefetch < last { rows.prefetch(bags.indices[k + bagPrefetch]) }
                    let i = bags.indices[k]
                    if i == pad { continue }
                    rows.add(i, bags.weight(k), acc)
                    n += 1
                }
            }
            if bags.mode == .mean && n > 1 {
                let c = Float(n)
                for j in 0..<dim { acc[j] /= c }
            }
            if !direct { storeFloats(acc, dim, out + b * dim * outDtype.size, outDtype) }
        }
    }
}
