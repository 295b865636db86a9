import XCTest
@testable import QembedCore

extension QembedError.Status: CaseIterable {
    public static var allCases: [QembedError.Status] {
        (1...100).compactMap { QembedError.Status(rawValue: $0) }
    }
}

extension QuantizedEmbedding.Kind: CaseIterable {
    public static var allCases: [QuantizedEmbedding.Kind] { [.int8, .fp4, .nf4] }
}

/// Every Swift enum that mirrors a header enum has the header's values: the
/// header is parsed and each constant is matched to the case of the same name
/// (underscores dropped, case folded), both ways (#17: one home per rule, and
/// the copies pinned to it).
final class HeaderEnumTests: XCTestCase {
    /// name -> value of the constants of `typedef enum <name> { ... }`.
    func headerEnum(_ name: String) throws -> [String: Int32] {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../include/qembed.h").path
        let text = try String(contentsOfFile: path, encoding: .utf8)
        guard let start = text.range(of: "typedef enum \(name) {"), let end = text.range(of: "} \(name);", range: start.upperBound..<text.endIndex) else {
            throw XCTSkip("no enum \(name) in the header")
        }
        var out: [String: Int32] = [:]
        for line in text[start.upperBound..<end.lowerBound].split(separator: "\n") {
            let code = line.split(separator: "/")[0]   // drop comments
            let parts = code.split(separator: "=").map { $0.trimmingCharacters(in: .whitespaces.union(CharacterSet(charactersIn: ","))) }
            if parts.count == 2, let v = Int32(parts[1]) { out[parts[0]] = v }
        }
        return out
    }

    func check<E: CaseIterable & RawRepresentable>(_ type: E.Type, _ header: String, prefix: String, skip: Set<String> = [],
                                                   file: StaticString = #filePath, line: UInt = #line) throws where E.RawValue == Int32 {
        let constants = try headerEnum(header)
        XCTAssertFalse(constants.isEmpty, header, file: file, line: line)
        let fold = { (s: String) in s.replacingOccurrences(of: "_", with: "").lowercased() }
        var seen = Set<String>()
        for c in E.allCases {
            let name = fold(String(describing: c))
            guard let (constant, value) = constants.first(where: { $0.key.hasPrefix(prefix) && fold(String($0.key.dropFirst(prefix.count))) == name }) else {
                XCTFail("\(E.self).\(c) has no \(prefix)* constant in \(header)", file: file, line: line); continue
            }
            XCTAssertEqual(value, c.rawValue, "\(constant) vs \(E.self).\(c)", file: file, line: line)
            seen.insert(constant)
        }
        for constant in constants.keys where !seen.contains(constant) && !skip.contains(constant) {
            XCTFail("\(constant) of \(header) has no case in \(E.self)", file: file, line: line)
        }
    }

    func testSwiftEnumsEqualTheHeader() throws {
        try check(QembedError.Status.self, "qembed_status", prefix: "QEMBED_ERR_", skip: ["QEMBED_OK"])
        try check(DType.self, "qembed_dtype", prefix: "QEMBED_DTYPE_")
        try check(FourBitType.self, "qembed_quant_type", prefix: "QEMBED_QUANT_")
        try check(OverrideKey.self, "qembed_override_key", prefix: "QEMBED_OVERRIDE_")
        try check(OptimizerKind.self, "qembed_optimizer_kind", prefix: "QEMBED_OPTIM_")
        try check(QuantizedEmbedding.Kind.self, "qembed_qembedding_kind", prefix: "QEMBED_QEMB_")
        try check(Bags.Mode.self, "qembed_bag_mode", prefix: "QEMBED_BAG_")
        try check(ScoreMetric.self, "qembed_score_metric", prefix: "QEMBED_SCORE_")
    }
}
