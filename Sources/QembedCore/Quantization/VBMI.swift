import CQembedSIMD

/// The AVX-512 VBMI register-table kernels (Sources/CQembedSIMD/qembed_vbmi.c):
/// whether they run here, and the dequantize tables of the two dynamic maps
/// the optimizers use. The kernels equal the portable paths byte for byte
/// (tools/vbmi_check.c proves it exhaustively); they are chosen at run time
/// on CPUs with AVX-512 F+DQ+BW+VBMI unless QEMBED_CPU names a lower tier.
public enum VBMI {
    /// True when the kernels run on this CPU (and are not switched off).
    @inline(__always)
    public static var enabled: Bool { qembed__vbmi_enabled() != 0 }

    /// True when the CPU has the instructions, whatever the switch says.
    public static var available: Bool { qembed__vbmi_cpu() != 0 }

    /// Tests: turn the kernels off (false) or back to what the CPU allows.
    public static func setEnabled(_ on: Bool) { qembed__vbmi_set_enabled(on ? 1 : 0) }

    /// A table owned for the life of the process.
    struct Table: @unchecked Sendable { let pointer: OpaquePointer? }

    static let signedDequant = Table(pointer: available ? qembed__vbmi_dequant_new(QuantMap.signedDynamicPointer) : nil)
    static let unsignedDequant = Table(pointer: available ? qembed__vbmi_dequant_new(QuantMap.unsignedDynamicPointer) : nil)

    /// out[i] = code[q[i]] * absmax through `table` (which must be non-nil).
    @inline(__always)
    static func dequantize(_ table: OpaquePointer, _ q: UnsafePointer<UInt8>, _ count: Int, _ absmax: Float,
                           _ out: UnsafeMutablePointer<Float>) {
        qembed__vbmi_dequantize(table, q, count, absmax, out)
    }
}
