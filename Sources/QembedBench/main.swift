import QembedCore
#if canImport(Glibc)
import Glibc
#endif

// qembed-bench: prints throughput of every kernel and layer next to a memcpy
// bandwidth probe measured in the same run.
// Usage: qembed-bench [quantize|embedding|quantized|optimizer] [--quick]
let quick = CommandLine.arguments.contains("--quick")
let n = quick ? 1 << 22 : 64 << 20
print("qembed-bench: \(Parallel.threadCount) threads (set QEMBED_NUM_THREADS to change)")
Bench.memcpyRate = Bench.memcpyGBs(bytes: n * 4)
print("memcpy probe: \(Bench.fmt(Bench.memcpyRate, 1)) GB/s (read + write, \((n * 4) >> 20) MiB)")
do {
    let only = CommandLine.arguments.dropFirst().first { !$0.hasPrefix("--") }
    if only == nil || only == "quantize" { try QuantizeBench.run(n: n) }
    if only == nil || only == "embedding" { try EmbeddingBench.run(quick: quick) }
    if only == nil || only == "quantized" { try QuantizedBench.run(quick: quick) }
    if only == nil || only == "optimizer" { try OptimizerBench.run(quick: quick) }
} catch {
    fputs("qembed-bench: \(error)\n", stderr)
    exit(1)
}
