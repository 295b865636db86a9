import QembedCore
#if canImport(Glibc)
import Glibc
#endif

/// One optimizer step on a 16M-element float32 parameter, 32- and 8-bit.
/// Bytes moved per element: param r+w (8), grad r (4), states r+w
/// (32-bit: 8 each, 8-bit: 2 each).
enum OptimizerBench {
    static func run(quick: Bool) throws {
        let n = getenv("QEMBED_BENCH_N").map { Int(String(cString: $0))! } ?? (quick ? 1 << 20 : 16 << 20)
        Bench.header("optimizer step, \(n >> 20)M float32 parameters, \(Parallel.threadCount) threads")
        let e = try Embedding(EmbeddingConfig(numEmbeddings: n / 1024, embeddingDim: 1024), seed: 1)
        let p = e.weight
        p.clearOverride(.optimBits)
        let g = try p.denseGrad()
        // Random gradients (sum of two uniforms: roughly bell-shaped, |g| < 1e-3),
        // so that states spread over many code values as in training.
        var rng = SplitMix(seed: 11)
        for i in 0..<n {
            let u = rng.next()
            g[i] = (Float(u >> 40) + Float(u & 0xFF_FFFF)) / Float(1 << 24) * 5e-4 - 5e-4
        }
        let only = getenv("QEMBED_BENCH_CASE").map { String(cString: $0) }
        for kind in OptimizerKind.allCases {
            for bits in [32, 8] where only == nil || only == "\(kind.name)\(bits)" {
                let opt = try Optimizer(OptimizerConfig.defaults(kind, optimBits: bits), params: [p])
                try opt.step()  // allocate state
                let t = try Bench.time(reps: getenv("QEMBED_BENCH_REPS").map { Int(String(cString: $0))! } ?? 10) { try opt.step() }
                let stateBytes = kind.stateCount * (bits == 8 ? 2 : 8)
                Bench.report("\(kind.name) \(bits)-bit (state \(Bench.fmt(Double(opt.stateBytes) / Double(n), 3)) B/param)",
                             seconds: t, elements: n, bytes: n * (12 + stateBytes))
            }
        }
    }
}
