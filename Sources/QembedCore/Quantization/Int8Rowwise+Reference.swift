/// The scalar specification of int8 row-wise quantization (bitsandbytes'
/// int8_vectorwise_quant): plain loops over float32 values. `Int8Rowwise`
/// must equal it byte for byte (Int8RowwiseTests).
///
/// - outlier columns (threshold > 0): columns with any |x| >= threshold;
/// - row_stats[r]: max |x| over the row's elements with |x| < threshold
///   (every element when threshold is 0);
/// - q = round-half-even(x * ((1 / row_stats) * 127)) in float32, clamped to
///   [-127, 127]; when that scale overflows (subnormal row maxima),
///   x / row_stats * 127; a zero row gives zeros; outlier columns give 0.
public enum Int8RowwiseReference {
    public static func quantize(_ a: [Float], rows: Int, cols: Int, threshold: Float) -> (q: [Int8], rowStats: [Float], outlierCols: [Int32]) {
        var outlier = [Bool](repeating: false, count: cols)
        if threshold > 0 { for i in a.indices where abs(a[i]) >= threshold { outlier[i % cols] = true } }
        var stats = [Float](repeating: 0, count: rows)
        var q = [Int8](repeating: 0, count: a.count)
        for r in 0..<rows {
            for c in 0..<cols where threshold <= 0 || abs(a[r * cols + c]) < threshold {
                stats[r] = max(stats[r], abs(a[r * cols + c]))
            }
            let st = stats[r]
            let scale: Float = st == 0 ? 0 : (1 / st) * 127
            for c in 0..<cols where !outlier[c] {
                let x = a[r * cols + c]
                let v = (scale.isFinite ? x * scale : x / st * 127).rounded(.toNearestOrEven)
                q[r * cols + c] = Int8(max(-127, min(127, v)))
            }
        }
        return (q, stats, (0..<cols).filter { outlier[$0] }.map(Int32.init))
    }

    /// out = (q * row_stats[r]) * (1/127) in float32.
    public static func dequantize(_ q: [Int8], rows: Int, cols: Int, rowStats: [Float]) -> [Float] {
        q.indices.map { Float(q[$0]) * rowStats[$0 / cols] * Int8Rowwise.inv127 }
    }
}
