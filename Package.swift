// swift-tools-version:6.0
// qembed: quantized and trainable embedding tables behind a stable C ABI.
import PackageDescription

// MARK: - Linker settings of the shared library
// SwiftPM sets no SONAME and exports every public Swift symbol; the version
// script keeps the exported set equal to the functions declared in
// include/qembed.h, and the SONAME carries the ABI major version.
//
// QEMBED_SONAME / QEMBED_TIER (set by the Makefile): the x86-64 build makes one
// library per CPU tier (libqembed-avx2.so, ...) behind a small dispatching
// libqembed.so (Sources/dispatch); QEMBED_TIER names the tier this build is
// for, reported by qembed_cpu_tier() when the library is used directly.
let soname = Context.environment["QEMBED_SONAME"] ?? "libqembed.so.0"
let tier = Context.environment["QEMBED_TIER"] ?? "native"
let libraryLinkerSettings: [LinkerSetting] = [
    .unsafeFlags([
        "-Xlinker", "-soname=\(soname)",
        "-Xlinker", "--version-script=qembed.map",
    ]),
]

let package = Package(
    name: "qembed",
    products: [
        // MARK: - Products
        .library(name: "qembed", type: .dynamic, targets: ["Qembed"]),
        .executable(name: "qembed-bench", targets: ["QembedBench"]),
        .executable(name: "qembed-cli", targets: ["QembedCLI"]),
    ],
    dependencies: [
        // Only the command-line tool uses it; the library needs nothing but the toolchain.
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // MARK: - C support: the public header and the thread-local error buffer
        .target(name: "CQembed", path: "Sources/CQembed"),

        // MARK: - Header-only vector helpers for the core (not API)
        .target(name: "CQembedSIMD", path: "Sources/CQembedSIMD"),

        // MARK: - Swift core: kernels and layers, no C-ABI concerns
        .target(
            name: "QembedCore",
            dependencies: ["CQembedSIMD"],
            path: "Sources/QembedCore",
            swiftSettings: [.unsafeFlags(["-Ounchecked"])]
        ),

        // MARK: - File formats: safetensors, .npy, JSON, quantized-layer files.
        // They read untrusted bytes, so they keep Swift's checks (-O, not
        // -Ounchecked: overflow traps, array bounds, preconditions).
        .target(
            name: "QembedIO",
            dependencies: ["QembedCore"],
            path: "Sources/QembedIO"
        ),

        // MARK: - The export layer: only @c @implementation thunks
        .target(
            name: "Qembed",
            dependencies: ["CQembed", "QembedCore", "QembedIO"],
            path: "Sources/Qembed",
            swiftSettings: [.define("QEMBED_TIER_" + tier.uppercased())],
            linkerSettings: libraryLinkerSettings
        ),

        // MARK: - Benchmarks (make bench, qembed bench)
        .target(
            name: "QembedBenchmarks",
            dependencies: ["QembedCore", "QembedIO"],
            path: "Sources/QembedBenchmarks",
            swiftSettings: [.unsafeFlags(["-Ounchecked"])]
        ),
        .executableTarget(
            name: "QembedBench",
            dependencies: ["QembedBenchmarks"],
            path: "Sources/QembedBench"
        ),

        // MARK: - The qembed command (installed as `qembed`)
        .executableTarget(
            name: "QembedCLI",
            dependencies: ["CQembed", "QembedCore", "QembedIO", "QembedBenchmarks", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "Sources/QembedCLI",
            swiftSettings: [.unsafeFlags(["-Ounchecked"]), .define("QEMBED_TIER_" + tier.uppercased())]
        ),

        // MARK: - Tests
        .testTarget(
            name: "QembedCoreTests",
            dependencies: ["QembedCore", "QembedIO"],
            path: "Tests/QembedCoreTests"
        ),
    ],
    // Kernels hand raw buffers to DispatchQueue.concurrentPerform; the Swift 5
    // language mode keeps that free of Sendable ceremony (races are covered by TSan runs).
    swiftLanguageModes: [.v5]
)
