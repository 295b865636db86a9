import CQembedSIMD

/// Rows of a table as float32 values, read straight into a reduction: a
/// float table, int8 rows with their scales, or packed 4-bit blocks. The row
/// values are those the layer's lookups produce before any rounding to an
/// output dtype (quantized: code x scale in float32).
protocol BagRowSource {
    var dim: Int { get }
    /// dst[j] = row(i)[j], j < dim.
    func load(_ i: Int, _ dst: UnsafeMutablePointer<Float>)
    /// acc[j] += row(i)[j] (w == 1) or row(i)[j] * w, j < dim.
    func add(_ i: Int, _ w: Float, _ acc: UnsafeMutablePointer<Float>)
    /// acc[j] = row(i)[j] (first) or the larger of the two (earlier wins ties).
    func maximum(_ i: Int, first: Bool, _ acc: UnsafeMutablePointer<Float>)
    func prefetch(_ i: Int)
}

struct FloatRows<E: FloatElement>: BagRowSource {
    let base: UnsafePointer<E.Storage>
    let dim: Int

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
}

/// Embedding8bit rows: v = q * (SCB / 127).
struct Int8Rows: BagRowSource {
    let q: UnsafePointer<Int8>
    let scb: UnsafePointer<Float>
    let dim: Int

    @inline(__always) private func load8(_ r: UnsafePointer<Int8>, _ j: Int, _ s: SIMD8<Float>) -> SIMD8<Float> {
        SIMD8<Float>(UnsafeRawPointer(r + j).loadUnaligned(as: SIMD8<Int8>.self)) * s
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

    @inline(__always) func prefetch(_ i: Int) { if dim <= prefetchMaxRowBytes { qembed__prefetch(q + i * dim, dim) } }
}

/// Embedding4bit rows: element e of the flat table is code[nibble e] x
/// absmax(e / blocksize), nibble e the high half of byte e / 2 when e is even.
struct FourBitRows: BagRowSource {
    let table: QuantizedEmbedding
    let packed: UnsafePointer<UInt8>
    let code: UnsafePointer<Float>
    let dim: Int

    /// body(j, v) for the row's elements in order, one block run at a time.
    @inline(__always) private func forEachValue(_ i: Int, _ body: (Int, Float) -> Void) {
        let start = i * dim, bs = table.blocksize
        var j = 0
        while j < dim {
            let b = (start + j) / bs
            let runEnd = min(dim, (b + 1) * bs - start)
            let a = table.absmax(b)
            var e = start + j
            if e & 1 == 1 { body(j, code[Int(packed[e >> 1] & 15)] * a); j += 1; e += 1 }
            while j + 2 <= runEnd {
                let byte = packed[e >> 1]
                body(j, code[Int(byte >> 4)] * a)
                body(j + 1, code[Int(byte & 15)] * a)
                j += 2; e += 2
            }
            if j < runEnd { body(j, code[Int(packed[e >> 1] >> 4)] * a); j += 1 }
        }
    }

    @inline(__always) func add(_ i: Int, _ w: Float, _ acc: UnsafeMutablePointer<Float>) {
        if w == 1 { forEachValue(i) { j, v in acc[j] += v } } else { forEachValue(i) { j, v in acc[j] += v * w } }
    }

    @inline(__always) func load(_ i: Int, _ dst: UnsafeMutablePointer<Float>) { forEachValue(i) { j, v in dst[j] = v } }

    @inline(__always) func maximum(_ i: Int, first: Bool, _ acc: UnsafeMutablePointer<Float>) {
        if first { forEachValue(i) { j, v in acc[j] = v } } else { forEachValue(i) { j, v in if v > acc[j] { acc[j] = v } } }
    }

    @inline(__always) func prefetch(_ i: Int) {
        let bytes = (dim + 1) / 2
        if bytes <= prefetchMaxRowBytes { qembed__prefetch(packed + i * dim / 2, bytes) }
    }
}

/// out[b] = the bags' reductions (see Bags) over `rows`, stored as outDtype.
func reduceBags<R: BagRowSource>(_ rows: R, _ bags: Bags, out: UnsafeMutableRawPointer, outDtype: DType) {
    let dim = rows.dim
    let pad = bags.paddingIdx ?? -1
    let direct = outDtype == .f32
    Parallel.forEachChunk(bags.numBags, grain: max(1, bags.numBags * 16384 / max(1, bags.bagged * dim))) { range in
        let scratch = direct ? nil : UnsafeMutablePointer<Float>.allocate(capacity: dim)
        defer { scratch?.deallocate() }
        for b in range {
            let acc = scratch ?? out.assumingMemoryBound(to: Float.self) + b * dim
            let lo = bags.start(b), hi = bags.end(b)
            var n = 0
            if bags.mode == .max {
                for k in lo..<hi {
                    if k + prefetchDistance < hi { rows.prefetch(bags.indices[k + prefetchDistance]) }
                    let i = bags.indices[k]
                    if i == pad { continue }
                    rows.maximum(i, first: n == 0, acc)
                    n += 1
                }
                if n == 0 { acc.update(repeating: 0, count: dim) }
            } else {
                acc.update(repeating: 0, count: dim)
                for k in lo..<hi {
                    if k + prefetchDistance < hi { rows.prefetch(bags.indices[k + prefetchDistance]) }
                    let i = bags.indices[k]
                    if i == pad { continue }
                    rows.add(i, bags.weight(k), acc)
                    n += 1
                }
                if bags.mode == .mean && n > 1 {
                    let c = Float(n)
                    for j in 0..<dim { acc[j] /= c }
                }
            }
            if !direct { storeFloats(acc, dim, out + b * dim * outDtype.size, outDtype) }
        }
    }
}
