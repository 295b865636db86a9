import ArgumentParser
import QembedBenchmarks

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "bench", abstract: "Run the benchmark suite (same as make bench).")

    @Argument(help: "One suite: quantize, embedding, quantized, optimizer (default: all).") var suite: String?
    @Flag(name: .long, help: "Small sizes, for a quick check.") var quick = false

    func validate() throws {
        if let s = suite, !Benchmarks.suites.contains(s) { throw ValidationError("unknown suite \(s) (use \(Benchmarks.suites.joined(separator: ", ")))") }
    }

    func run() throws { try Benchmarks.run(only: suite, quick: quick) }
}
