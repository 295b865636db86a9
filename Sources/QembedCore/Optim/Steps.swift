#if canImport(Glibc)
import Glibc
#endif

/// Dense 32-bit step: one pass (two with max_unorm, which needs the update norm).
enum DenseStep32 {
    static func run(_ k: UpdateScalars, _ c: OptimizerConfig, _ p: Parameter, _ s: OptimizerState) throws(QembedError) {
        let n = p.numel
        let g = p.grad!.floats()
        let s1 = s.state1.floats(), s2 = s.state2?.floats()
        let dtype = p.dtype, data = p.data.raw
        let alpha = UpdateRules.alpha32(k)
        let usesUnorm = c.maxUnorm > 0 && (k.kind == .adam || k.kind == .adamw || k.kind == .momentum || k.kind == .rmsprop)
        if !usesUnorm {
            Parallel.forEachChunk(n, grain: 1 << 14) { r in
                var dummy: Float = 0
                for i in r {
                    let gi = g[i]
                    if c.skipZeros && gi == 0 { continue }
                    var pi = loadFloat(data, dtype, i)
                    let u: Float
                    if let s2 { u = UpdateRules.update32(k, g: gi, p: &pi, s1: &s1[i], s2: &s2[i]) }
                    else { u = UpdateRules.update32(k, g: gi, p: &pi, s1: &s1[i], s2: &dummy) }
                    storeFloat(pi + alpha * u, data, dtype, i)
                }
            }
            return
        }
        // max_unorm: scale = min(1, max_unorm * ||p|| / ||update||) over the whole tensor.
        var pn = 0.0
        for i in 0..<n { let v = Double(loadFloat(data, dtype, i)); pn += v * v }
        let paramNorm = pn.squareRoot()
        let upd = try AlignedBuffer(byteCount: n * 4, zeroed: false)
        let u = upd.floats()
        let pf = try AlignedBuffer(byteCount: n * 4, zeroed: false)
        let pv = pf.floats()
        var un = 0.0
        var dummy: Float = 0
        for i in 0..<n {
            var pi = loadFloat(data, dtype, i)
            if c.skipZeros && g[i] == 0 { u[i] = 0; pv[i] = pi; continue }
            if let s2 { u[i] = UpdateRules.update32(k, g: g[i], p: &pi, s1: &s1[i], s2: &s2[i]) }
            else { u[i] = UpdateRules.update32(k, g: g[i], p: &pi, s1: &s1[i], s2: &dummy) }
            pv[i] = pi
            un += Double(u[i]) * Double(u[i])
        }
        let unorm = un.squareRoot()
        let scale: Float = unorm > c.maxUnorm * paramNorm ? Float(c.maxUnorm * paramNorm / unorm) : 1
        let a = Float(Double(alpha) * Double(scale))
        for i in 0..<n { storeFloat(pv[i] + a * u[i], data, dtype, i) }
    }
}

/// The fused 8-bit step over blocks: dequantize state, update, requantize.
enum EightBitStep {
    static let search1 = CodeSearch.signedDynamic
    static let search2 = CodeSearch.unsignedDynamic

    static func dense(_ k: UpdateScalars, _ c: OptimizerConfig, _ p: Parameter, _ s: OptimizerState) {
        let g = p.grad!.floats()
        Parallel.forEachChunk(s.blocks, grain: 16) { r in
            for b in r { block(k, c, p, s, b, grad: g + s.range(ofBlock: b).lowerBound) }
        }
    }

    /// Updates block b given its gradient values (g[0..<count]).
    @inline(__always)
    static func block(_ k: UpdateScalars, _ c: OptimizerConfig, _ p: Parameter, _ s: OptimizerState, _ b: Int, grad g: UnsafePointer<Float>) {
        let range = s.range(ofBlock: b)
        let lo = range.lowerBound, count = range.count
        let q1 = s.state1.raw.assumingMemoryBound(to: UInt8.self) + lo
        let q2 = s.state2.map { $0.raw.assumingMemoryBound(to: UInt8.self) + lo }
        let a1 = s.absmax1!.floats(), a2 = s.absmax2?.floats()
        let code1 = search1.code, code2 = search2.code
        var v1 = (SIMD16<Float>(), SIMD16<Float>(), SIMD16<Float>(), SIMD16<Float>(), SIMD16<Float>(), SIMD16<Float>(), SIMD16<Float>(), SIMD16<Float>(),
                  SIMD16<Float>(), SIMD16<Float>(), SIMD16<Float>(), SIMD16<Float>(), SIMD16<Float>(), SIMD16<Float>(), SIMD16<Float>(), SIMD16<Float>())
        var v2 = v1
        withUnsafeMutableBytes(of: &v1) { b1 in
            withUnsafeMutableBytes(of: &v2) { b2 in
                let t1 = b1.baseAddress!.assumingMemoryBound(to: Float.self)
                let t2 = b2.baseAddress!.assumingMemoryBound(to: Float.self)
                code1.withUnsafeBufferPointer { c1 in
                    code2.withUnsafeBufferPointer { c2 in
                        // Dequantize.
                        let m1 = a1[b]
                        for j in 0..<count { t1[j] = c1[Int(q1[j])] * m1 }
                        if let q2, let a2 {
                            let m2 = a2[b]
                            for j in 0..<count { t2[j] = c2[Int(q2[j])] * m2 }
                        }
                        // Update.
                        let dtype = p.dtype, data = p.data.raw
                        for j in 0..<count {
                            if c.skipZeros && g[j] == 0 { continue }
                            var pj = loadFloat(data, dtype, lo + j)
                            UpdateRules.update8(k, g: g[j], p: &pj, s1: &t1[j], s2: &t2[j])
                            storeFloat(pj, data, dtype, lo + j)
                        }
                        // Requantize with the exact nearest rule.
                        requantize(t1, count, search1, q1, &a1[b])
                        if let q2, let a2 { requantize(t2, count, search2, q2, &a2[b]) }
                    }
                }
            }
        }
    }

    @inline(__always)
    static func requantize(_ t: UnsafePointer<Float>, _ count: Int, _ search: CodeSearch, _ q: UnsafeMutablePointer<UInt8>, _ absmax: inout Float) {
        var m: Float = 0
        for j in 0..<count { m = max(m, abs(t[j])) }
        absmax = m
        let scale = BlockScale(absmax: m)
        for j in 0..<count { q[j] = search.index(scale.scaled(t[j])) }
    }
}

/// Sparse steps: only the rows present in the sparse gradient are updated.
enum SparseStep {
    static func run(_ k: UpdateScalars, _ c: OptimizerConfig, _ p: Parameter, _ s: OptimizerState) throws(QembedError) {
        let cols = p.cols
        let rows = p.sparseRows
        try p.sparseValues.withUnsafeBufferPointer { (vb) throws(QembedError) in
            let v = vb.baseAddress!
            if s.bits == 8 {
                let bpr = s.blocksPerRow
                Parallel.forEachChunk(rows.count, grain: max(1, 4096 / cols)) { r in
                    for t in r {
                        for j in 0..<bpr {
                            let b = rows[t] * bpr + j
                            EightBitStep.block(k, c, p, s, b, grad: v + t * cols + j * OptimizerState.blocksize)
                        }
                    }
                }
                return
            }
            if c.maxUnorm > 0 && k.kind != .lion && k.kind != .adagrad {
                throw .unsupported("max_unorm is not supported with sparse gradients")
            }
            let s1 = s.state1.floats(), s2 = s.state2?.floats()
            let alpha = UpdateRules.alpha32(k)
            let dtype = p.dtype, data = p.data.raw
            Parallel.forEachChunk(rows.count, grain: max(1, 4096 / cols)) { r in
                var dummy: Float = 0
                for t in r {
                    let base = rows[t] * cols
                    for j in 0..<cols {
                        let gi = v[t * cols + j], i = base + j
                        if c.skipZeros && gi == 0 { continue }
                        var pi = loadFloat(data, dtype, i)
                        let u: Float
                        if let s2 { u = UpdateRules.update32(k, g: gi, p: &pi, s1: &s1[i], s2: &s2[i]) }
                        else { u = UpdateRules.update32(k, g: gi, p: &pi, s1: &s1[i], s2: &dummy) }
                        storeFloat(pi + alpha * u, data, dtype, i)
                    }
                }
            }
        }
    }
}
