import ArgumentParser
import CQembed
import QembedCore
import QembedIO
#if canImport(Glibc)
import Glibc
#endif

/// `qembed`: quantize, inspect and look up embedding tables; benchmarks; the demo.
/// Exit status: 0 success, 1 failure (the library's message on stderr), 2 usage error.
@main
struct Qembed: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "qembed",
        abstract: "Quantized and trainable embedding tables (bitsandbytes-compatible) on the CPU.",
        version: qembedVersion,
        subcommands: [Quantize.self, Inspect.self, Lookup.self, Consolidate.self, BenchCommand.self, Demo.self]
    )

    static func main() {
        if CommandLine.arguments.count == 1 {
            // No subcommand: a usage error.
            fputs(helpMessage() + "\n", stderr)
            Glibc.exit(2)
        }
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch let e as QembedError {
            fail(e.message, status: 1)
        } catch let e as CLIError {
            fail(e.message, status: e.usage ? 2 : 1)
        } catch {
            let code = exitCode(for: error)
            if code == .success {
                print(fullMessage(for: error))
                Glibc.exit(0)
            }
            // ArgumentParser's usage errors (EX_USAGE) become status 2.
            fputs(fullMessage(for: error) + "\n", stderr)
            Glibc.exit(code == .validationFailure ? 2 : code.rawValue)
        }
    }

    static func fail(_ message: String, status: Int32) -> Never {
        fputs("qembed: \(message)\n", stderr)
        Glibc.exit(status)
    }
}

/// A failure of the command itself; `usage` marks a usage error (exit 2).
struct CLIError: Error {
    var message: String
    var usage = false
    static func usage(_ m: String) -> CLIError { CLIError(message: m, usage: true) }
}

/// Stderr progress: a redrawn bar on a terminal, plain lines otherwise;
/// nothing for work that ends within a second, nothing with --quiet.
struct Progress {
    nonisolated(unsafe) static var quiet = false
    let label: String
    let total: Int
    let tty = isatty(2) != 0
    let start = monotonicNow()
    var lastPrinted = -1
    var shown = false

    init(_ label: String, total: Int) { self.label = label; self.total = max(total, 1) }

    mutating func update(_ done: Int, _ extra: String = "") {
        guard !Progress.quiet, shown || monotonicNow() - start >= 1 else { return }
        shown = true
        let pct = min(100, done * 100 / total)
        if tty {
            let width = 30, filled = pct * width / 100
            let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
            fputs("\r\(label) [\(bar)] \(pct)% \(extra)   ", stderr)
            if done >= total { fputs("\n", stderr) }
        } else if pct / 10 != lastPrinted / 10 || done >= total {
            fputs("\(label): \(pct)% \(extra)\n", stderr)
        }
        lastPrinted = pct
    }
}

/// Seconds on the monotonic clock.
func monotonicNow() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

/// Runs one phase of a command; says how long it took when that was a
/// second or more (and not --quiet), so no phase of long work is silent.
func phase<T>(_ label: String, _ body: () throws -> T) rethrows -> T {
    let t0 = monotonicNow()
    let r = try body()
    let dt = monotonicNow() - t0
    if !Progress.quiet && dt >= 1 { fputs("\(label): done in \(fmt(dt, 3)) s\n", stderr) }
    return r
}

func fmt(_ v: Double, _ digits: Int = 4) -> String {
    var buf = [CChar](repeating: 0, count: 64)
    _ = withVaList([v]) { vsnprintf(&buf, 64, "%.\(digits)g", $0) }
    return String(cString: buf)
}

func humanBytes(_ b: Int) -> String {
    if b >= 1 << 30 { return fmt(Double(b) / Double(1 << 30), 3) + " GiB" }
    if b >= 1 << 20 { return fmt(Double(b) / Double(1 << 20), 3) + " MiB" }
    if b >= 1 << 10 { return fmt(Double(b) / Double(1 << 10), 3) + " KiB" }
    return "\(b) B"
}

func fileSize(_ path: String) -> Int {
    var st = stat()
    return stat(path, &st) == 0 ? Int(st.st_size) : 0
}

/// Fails (usage-independent) when the directory of `path` does not exist.
/// Checks an output path before any work: its directory exists; the path is
/// not a directory, not the input itself (never replaced, with or without
/// --force), and does not exist unless `force`.
func checkOutput(_ path: String, input: String, force: Bool) throws {
    if path.hasSuffix("/") { throw CLIError(message: "-o \(path) names a directory; give a file name") }
    try checkOutputDirectory(path)
    var st = stat(), si = stat()
    guard stat(path, &st) == 0 else { return }
    if (st.st_mode & S_IFMT) == S_IFDIR { throw CLIError(message: "-o \(path) is a directory; give a file name") }
    if stat(input, &si) == 0 && si.st_dev == st.st_dev && si.st_ino == st.st_ino {
        throw CLIError(message: "-o \(path) is the input file: refusing to replace it (write to another file)")
    }
    if !force { throw CLIError(message: "\(path) exists: use --force to replace it") }
}

/// SIGINT/SIGTERM: remove the temporary file of a write in progress (the
/// old output stays, as the write is a rename), then die of the signal.
func installSignalCleanup() {
    _ = AtomicFile.pendingTemp  // initialized here, never first in the handler
    AtomicFile.trackPending = true
    let handler: @convention(c) (Int32) -> Void = { sig in
        if AtomicFile.pendingTemp[0] != 0 { unlink(AtomicFile.pendingTemp) }
        signal(sig, SIG_DFL)
        raise(sig)
    }
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        // A signal ignored when the command started (nohup, a background job
        // of a non-interactive shell) stays ignored, as the convention is.
        var old = sigaction()
        sigaction(sig, nil, &old)
        if unsafeBitCast(old.__sigaction_handler.sa_handler, to: Int.self) == 1 { continue }  // SIG_IGN
        signal(sig, handler)
    }
}

func checkOutputDirectory(_ path: String) throws {
    let dir: String
    if let slash = path.lastIndex(of: "/") { dir = slash == path.startIndex ? "/" : String(path[..<slash]) } else { dir = "." }
    var st = stat()
    guard stat(dir, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else {
        throw CLIError(message: "output directory \(dir) does not exist")
    }
}

/// `qembed --version`: the version and the CPU tier this command was built
/// for (the command carries its own copy of the core; the installed one is
/// the baseline build, which runs on every x86-64-v2 CPU).
/// The version comes from include/qembed.h's macros, as qembed_version() does.
#if QEMBED_TIER_BASELINE
let qembedVersion = "\(QEMBED_VERSION_MAJOR).\(QEMBED_VERSION_MINOR).\(QEMBED_VERSION_PATCH) (cpu tier: baseline, x86-64-v2)"
#else
let qembedVersion = "\(QEMBED_VERSION_MAJOR).\(QEMBED_VERSION_MINOR).\(QEMBED_VERSION_PATCH) (cpu tier: native, built for its build machine)"
#endif
