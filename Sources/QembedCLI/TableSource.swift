import QembedCore
import QembedIO

#if canImport(Glibc)
import Glibc
#endif

/// A float table of a safetensors/.npy file.
struct FloatTable {
    let entry: TensorEntry
    let data: UnsafeRawPointer
    let dtype: DType
    var rows: Int { entry.shape.count == 2 ? entry.shape[0] : 1 }
    var cols: Int { entry.shape.count == 2 ? entry.shape[1] : entry.numel }

    /// The table `entry` of `file`, or the reason it cannot be one.
    init(_ file: TensorFile, _ chosen: TensorEntry) throws {
        guard let d = chosen.dtype, d.isFloat else {
            throw CLIError(message: "tensor \"\(chosen.name)\" has dtype \(chosen.dtypeName); a float table (F32, F16, BF16) is required")
        }
        guard chosen.shape.count == 2 || chosen.shape.count == 1, chosen.numel > 0 else {
            throw CLIError(message: "tensor \"\(chosen.name)\" has shape \(chosen.shape); a non-empty 2-D table is required")
        }
        entry = chosen
        dtype = d
        data = file.data(file.index(of: chosen.name)!)
    }

    func value(_ i: Int) -> Float { loadFloat(data, dtype, i) }

    static func describe(_ e: TensorEntry) -> String {
        "\(e.name) (\(e.dtypeName) \(e.shape.map(String.init).joined(separator: "x")))"
    }

    static func isCandidate(_ e: TensorEntry) -> Bool { e.shape.count == 2 && (e.dtype?.isFloat ?? false) && e.numel > 0 }

    /// The tables to quantize: every tensor named by `patterns` (names or
    /// shell globs, each matching at least one tensor), else "weight", else
    /// the only 2-D float tensor (or the file's only tensor, whose reason
    /// not to be a table is then given).
    static func choose(_ file: TensorFile, _ patterns: [String], path: String) throws -> [FloatTable] {
        if !patterns.isEmpty {
            var chosen: [TensorEntry] = []
            for p in patterns {
                let matched = file.entries.filter { fnmatch(p, $0.name, 0) == 0 }
                guard !matched.isEmpty else {
                    throw CLIError(message: "--tensor \(p): no tensor of \(path) matches (it holds: " +
                                   file.entries.prefix(12).map(describe).joined(separator: ", ") + (file.entries.count > 12 ? ", ..." : "") + ")")
                }
                // a glob takes the float tables it matches; a plain name must be one
                let tables = p.contains(where: { "*?[".contains($0) }) ? matched.filter(isCandidate) : matched
                guard !tables.isEmpty else { throw CLIError(message: "--tensor \(p) matches no 2-D float tensor: " + matched.map(describe).joined(separator: ", ")) }
                for t in tables where !chosen.contains(where: { $0.name == t.name }) { chosen.append(t) }
            }
            return try chosen.map { try FloatTable(file, $0) }
        }
        if let w = file.index(of: "weight") { return [try FloatTable(file, file.entries[w])] }
        let candidates = file.entries.filter(isCandidate)
        if candidates.count == 1 { return [try FloatTable(file, candidates[0])] }
        if candidates.isEmpty && file.entries.count == 1 { return [try FloatTable(file, file.entries[0])] }
        if candidates.isEmpty {
            throw CLIError(message: "\(path) holds no 2-D float tensor (F32, F16, BF16) to quantize; its tensors: " +
                           file.entries.prefix(12).map(describe).joined(separator: ", ") + (file.entries.count > 12 ? ", ..." : ""))
        }
        throw CLIError.usage("\(path) holds \(candidates.count) 2-D float tensors; choose with --tensor NAME (repeatable, globs allowed): " +
                             candidates.prefix(12).map(describe).joined(separator: ", ") + (candidates.count > 12 ? ", ..." : ""))
    }
}

/// Reconstruction error of a table against its dequantized copy.
struct ErrorReport {
    var maxAbs = 0.0, sumAbs = 0.0, sumSq = 0.0, cosine = 0.0
    var count = 0, rows = 0

    mutating func addRow(_ a: (Int) -> Float, _ b: UnsafePointer<Float>, _ n: Int) {
        var dot = 0.0, na = 0.0, nb = 0.0
        for j in 0..<n {
            let x = Double(a(j)), y = Double(b[j]), d = abs(x - y)
            maxAbs = max(maxAbs, d); sumAbs += d; sumSq += d * d
            dot += x * y; na += x * x; nb += y * y
        }
        cosine += na == 0 && nb == 0 ? 1 : (na == 0 || nb == 0 ? 0 : dot / (na.squareRoot() * nb.squareRoot()))
        count += n; rows += 1
    }

    var summary: String {
        "max abs \(fmt(maxAbs)), mean abs \(fmt(sumAbs / Double(max(count, 1)))), RMSE \(fmt((sumSq / Double(max(count, 1))).squareRoot())), " +
        "mean row cosine \(fmt(cosine / Double(max(rows, 1)), 6))"
    }
}
