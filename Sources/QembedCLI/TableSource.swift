import QembedCore
import QembedIO

/// A float table chosen from a safetensors/.npy file: the named tensor, or
/// "weight", or the only 2-D float tensor.
struct FloatTable {
    let file: TensorFile
    let entry: TensorEntry
    let data: UnsafeRawPointer
    let dtype: DType
    var rows: Int { entry.shape.count == 2 ? entry.shape[0] : 1 }
    var cols: Int { entry.shape.count == 2 ? entry.shape[1] : entry.numel }

    init(path: String, tensor: String?) throws {
        file = try TensorFile(path: path)
        let chosen: TensorEntry
        if let tensor {
            chosen = try file.entry(named: tensor).0
        } else if let w = file.index(of: "weight") {
            chosen = file.entries[w]
        } else {
            let candidates = file.entries.filter { $0.shape.count == 2 && ($0.dtype?.isFloat ?? false) }
            guard candidates.count == 1 else {
                throw CLIError.usage("\(path) holds \(candidates.count) 2-D float tensors; choose one with --tensor (" +
                                     file.entries.prefix(10).map(\.name).joined(separator: ", ") + ")")
            }
            chosen = candidates[0]
        }
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
