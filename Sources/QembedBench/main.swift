import QembedBenchmarks
#if canImport(Glibc)
import Glibc
#endif

// qembed-bench [quantize|embedding|quantized|optimizer] [--quick]
let args = CommandLine.arguments.dropFirst()
do {
    try Benchmarks.run(only: args.first { !$0.hasPrefix("--") }, quick: args.contains("--quick"))
} catch {
    fputs("qembed-bench: \(error)\n", stderr)
    exit(1)
}
