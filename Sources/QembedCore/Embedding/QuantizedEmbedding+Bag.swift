/// Bags over a quantized table: each referenced row is dequantized into the
/// reduction (never into a row buffer), with the values of forward before
/// any rounding to the layer's dtype.
extension QuantizedEmbedding {
    public func bagForward(_ bags: Bags, out: UnsafeMutableRawPointer, outDtype: DType) throws(QembedError) {
        guard outDtype.isFloat else { throw .unsupported("out_dtype: \(outDtype.name) is not a float type (use f32, f16 or bf16)") }
        if kind == .int8 {
            reduceBags(Int8Rows(q: q.assumingMemoryBound(to: Int8.self), scb: scales!, dim: embeddingDim), bags, out: out, outDtype: outDtype)
            return
        }
        QuantMap.fourBit(kind.fourBit!).withUnsafeBufferPointer { cb in
            reduceBags(FourBitRows(table: self, packed: q.assumingMemoryBound(to: UInt8.self), code: cb.baseAddress!, dim: embeddingDim),
                       bags, out: out, outDtype: outDtype)
        }
    }
}
