import QembedCore

/// The benchmark suite (`make bench`, `qembed bench`): every kernel and layer
/// next to a memcpy bandwidth probe measured in the same run.
public enum Benchmarks {
    public static let suites = ["quantize", "embedding", "quantized", "bags", "optimizer"]

    /// Runs `only` (or every suite) at full size, or small with `quick`.
    public static func run(only: String?, quick: Bool) throws {
        let n = quick ? 1 << 22 : 64 << 20
        print("qembed-bench: \(Parallel.threadCount) threads (set QEMBED_NUM_THREADS to change)")
        print("8-bit code kernels: " + (VBMI.enabled ? "AVX-512 VBMI register tables (QEMBED_CPU=avx2 for the portable ones)"
                                        : VBMI.available ? "portable SIMD (AVX-512 VBMI present but off: QEMBED_CPU names a lower tier)"
                                        : "portable SIMD (this CPU has no AVX-512 VBMI)"))
        Bench.memcpyRate = Bench.memcpyGBs(bytes: n * 4)
        print("memcpy probe: \(Bench.fmt(Bench.memcpyRate, 1)) GB/s (read + write, \((n * 4) >> 20) MiB); \"of memcpy\" is each case's GB/s " +
              "against it; above 100% a case is cache-resident (<= 64 MiB moved) or a write-heavy stream (memcpy is half reads)")
        if only == nil || only == "quantize" { try QuantizeBench.run(n: n) }
        if only == nil || only == "embedding" { try EmbeddingBench.run(quick: quick) }
        if only == nil || only == "quantized" { try QuantizedBench.run(quick: quick) }
        if only == nil || only == "bags" { try BagBench.run(quick: quick) }
        if only == nil || only == "optimizer" { try OptimizerBench.run(quick: quick) }
    }
}
