/// Bags over a quantized table: each referenced row is dequantized into the
/// reduction (never into a looked-up row matrix), with the values forward
/// returns (rounded to the layer's dtype when that is f16 or bf16).
extension QuantizedEmbedding {
    public func bagForward(_ bags: Bags, out: UnsafeMutableRawPointer, outDtype: DType) throws(QembedError) {
        guard outDtype.isFloat else { throw .unsupported("out_dtype: \(outDtype.name) is not a float type (use f32, f16 or bf16)") }
        withRows { rows in reduce(rows, bags, out, outDtype) }
    }

    private func reduce<R: BagRowSource>(_ rows: R, _ bags: Bags, _ out: UnsafeMutableRawPointer, _ outDtype: DType) {
        reduceBags(rows, bags, out: out, outDtype: outDtype)
    }

    /// Calls body with the table as a row source: the rows forward returns.
    func withRows<T>(_ body: (any BagRowSource) -> T) -> T {
        func rounded<R: BagRowSource>(_ r: R) -> T { dtype == .f32 ? body(r) : body(RoundedRows(base: r, dtype: dtype)) }
        if kind == .int8 { return rounded(Int8Rows(q: q.assumingMemoryBound(to: Int8.self), scb: scales!, dim: embeddingDim)) }
        return QuantMap.fourBit(kind.fourBit!).withUnsafeBufferPointer { cb in
            rounded(FourBitRows(table: self, packed: q.assumingMemoryBound(to: UInt8.self), code: cb.baseAddress!, dim: embeddingDim))
        }
    }
}
