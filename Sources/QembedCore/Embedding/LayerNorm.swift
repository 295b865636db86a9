/// LayerNorm over the last dimension in float32 (eps 1e-5), with learnable
/// float32 weight (ones) and bias (zeros): StableEmbedding's normalization.
public final class LayerNorm: @unchecked Sendable {
    public let dim: Int
    public let eps: Float = 1e-5
    public let weight: Parameter
    public let bias: Parameter

    init(dim: Int, lock: RWLock) throws(QembedError) {
        self.dim = dim
        weight = try Parameter(name: "norm.weight", dtype: .f32, shape: [dim], lock: lock)
        bias = try Parameter(name: "norm.bias", dtype: .f32, shape: [dim], lock: lock)
        reset()
    }

    func reset() {
        let w = weight.data.floats(), b = bias.data.floats()
        for j in 0..<dim { w[j] = 1; b[j] = 0 }
    }

    /// mean and 1/sqrt(var + eps) of a row (two-pass, biased variance).
    @inline(__always)
    func moments(_ x: UnsafePointer<Float>) -> (mean: Float, rstd: Float) {
        var s = SIMD8<Float>(), j = 0
        while j + 8 <= dim { s += UnsafeRawPointer(x + j).loadUnaligned(as: SIMD8<Float>.self); j += 8 }
        var sum = s.sum()
        while j < dim { sum += x[j]; j += 1 }
        let mean = sum / Float(dim)
        var q = SIMD8<Float>()
        let m8 = SIMD8<Float>(repeating: mean)
        j = 0
        while j + 8 <= dim { let d = UnsafeRawPointer(x + j).loadUnaligned(as: SIMD8<Float>.self) - m8; q += d * d; j += 8 }
        var sq = q.sum()
        while j < dim { let d = x[j] - mean; sq += d * d; j += 1 }
        return (mean, 1 / (sq / Float(dim) + eps).squareRoot())
    }

    /// y = (x - mean) * rstd * weight + bias (y may be x).
    @inline(__always)
    func forwardRow(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>) {
        let (mean, rstd) = moments(x)
        let w = weight.data.floats(), b = bias.data.floats()
        let m8 = SIMD8<Float>(repeating: mean), r8 = SIMD8<Float>(repeating: rstd)
        var j = 0
        while j + 8 <= dim {
            let v = (UnsafeRawPointer(x + j).loadUnaligned(as: SIMD8<Float>.self) - m8) * r8
                * UnsafeRawPointer(w + j).loadUnaligned(as: SIMD8<Float>.self)
                + UnsafeRawPointer(b + j).loadUnaligned(as: SIMD8<Float>.self)
            UnsafeMutableRawPointer(y + j).storeBytes(of: v, as: SIMD8<Float>.self)
            j += 8
        }
        while j < dim { y[j] = (x[j] - mean) * rstd * w[j] + b[j]; j += 1 }
    }

    /// Backward of `count` rows: g (count x dim) holds dL/dy on entry and
    /// dL/dx on return; weight.grad and bias.grad accumulate. `loadRow(k, x)`
    /// writes the layer input of row k into x (recomputed, not saved).
    func backwardRows(count: Int, g: UnsafeMutablePointer<Float>, loadRow: (Int, UnsafeMutablePointer<Float>) -> Void) {
        let dim = self.dim
        let w = weight.data.floats()
        let parts = min(Parallel.threadCount, max(1, count * dim / 32768))
        // Per-part partial sums of dweight / dbias, reduced in part order.
        let partial = UnsafeMutablePointer<Float>.allocate(capacity: parts * 2 * dim)
        partial.initialize(repeating: 0, count: parts * 2 * dim)
        defer { partial.deallocate() }
        Parallel.forEachChunk(parts, grain: 1) { pr in
            let x = UnsafeMutablePointer<Float>.allocate(capacity: dim)
            defer { x.deallocate() }
            for part in pr {
                let dw = partial + part * 2 * dim, db = dw + dim
                for k in (count * part / parts)..<(count * (part + 1) / parts) {
                    loadRow(k, x)
                    let (mean, rstd) = moments(x)
                    let gk = g + k * dim
                    var s1 = SIMD8<Float>(), s2 = SIMD8<Float>()
                    let m8 = SIMD8<Float>(repeating: mean), r8 = SIMD8<Float>(repeating: rstd)
                    var j = 0
                    while j + 8 <= dim {
                        let xh = (load8(x + j) - m8) * r8, gv = load8(gk + j), dxh = gv * load8(w + j)
                        store8(xh, x + j)
                        store8(load8(db + j) + gv, db + j)
                        store8(load8(dw + j) + gv * xh, dw + j)
                        s1 += dxh
                        s2 += dxh * xh
                        j += 8
                    }
                    var sumDx = s1.sum(), sumDxXhat = s2.sum()
                    while j < dim {
                        let xhat = (x[j] - mean) * rstd
                        x[j] = xhat
                        db[j] += gk[j]
                        dw[j] += gk[j] * xhat
                        let dxhat = gk[j] * w[j]
                        sumDx += dxhat
                        sumDxXhat += dxhat * xhat
                        j += 1
                    }
                    let a = sumDx / Float(dim), b = sumDxXhat / Float(dim)
                    for j in 0..<dim { gk[j] = rstd * (gk[j] * w[j] - a - x[j] * b) }
                }
            }
        }
        guard weight.requiresGrad, let gw = try? weight.denseGrad(), let gb = try? bias.denseGrad() else { return }
        for part in 0..<parts {
            let dw = partial + part * 2 * dim, db = dw + dim
            for j in 0..<dim { gw[j] += dw[j]; gb[j] += db[j] }
        }
    }
}

@inline(__always) func load8(_ p: UnsafePointer<Float>) -> SIMD8<Float> { UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self) }
@inline(__always) func load8(_ p: UnsafeMutablePointer<Float>) -> SIMD8<Float> { UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self) }
@inline(__always) func store8(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>) { UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self) }
