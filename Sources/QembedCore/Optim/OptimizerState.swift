/// The state an optimizer keeps for one parameter.
///
/// 32-bit: state1/state2 hold numel floats. 8-bit: numel bytes each, plus one
/// float32 absmax per block of 256 (state1 with the signed dynamic map, state2
/// with the unsigned one). Blocks are laid out flat over the parameter, as
/// bitsandbytes does, except for sparse parameters, whose blocks never
/// straddle rows (ceil(cols / 256) blocks per row), so that a row's state can
/// be updated without touching any other row.
public final class OptimizerState: @unchecked Sendable {
    public static let blocksize = 256
    public internal(set) var step: Int = 0
    /// Upper bounds of |state1| and |state2| (see StepGuard).
    var bound1: Double = 0, bound2: Double = 0
    public let bits: Int
    public let numel: Int
    public let rowAligned: Bool
    public let cols: Int
    public let state1: AlignedBuffer
    public let state2: AlignedBuffer?
    public let absmax1: AlignedBuffer?
    public let absmax2: AlignedBuffer?

    init(bits: Int, numel: Int, cols: Int, rowAligned: Bool, states: Int) throws(QembedError) {
        self.bits = bits
        self.numel = numel
        self.cols = cols
        self.rowAligned = rowAligned
        let elementBytes = bits == 8 ? 1 : 4
        state1 = try AlignedBuffer(byteCount: try checkedMul(numel, elementBytes, "state bytes"))
        state2 = states == 2 ? try AlignedBuffer(byteCount: numel * elementBytes) : nil
        if bits == 8 {
            let blocks = OptimizerState.blockCount(numel: numel, cols: cols, rowAligned: rowAligned)
            // Zero state quantizes to the code index of 0: 127 (signed), 0 (unsigned).
            state1.raw.initializeMemory(as: UInt8.self, repeating: StateRounding.zeroSigned, count: numel)
            absmax1 = try AlignedBuffer(byteCount: blocks * 4)
            absmax2 = states == 2 ? try AlignedBuffer(byteCount: blocks * 4) : nil
        } else {
            absmax1 = nil
            absmax2 = nil
        }
    }

    public static func blockCount(numel: Int, cols: Int, rowAligned: Bool) -> Int {
        rowAligned ? (numel / cols) * ceilDiv(cols, blocksize) : ceilDiv(numel, blocksize)
    }

    public var blocks: Int { OptimizerState.blockCount(numel: numel, cols: cols, rowAligned: rowAligned) }
    public var blocksPerRow: Int { ceilDiv(cols, OptimizerState.blocksize) }

    /// Element range of block b.
    @inline(__always)
    public func range(ofBlock b: Int) -> Range<Int> {
        if rowAligned {
            let r = b / blocksPerRow, j = b % blocksPerRow
            let lo = r * cols + j * OptimizerState.blocksize
            return lo..<min(r * cols + cols, lo + OptimizerState.blocksize)
        }
        let lo = b * OptimizerState.blocksize
        return lo..<min(numel, lo + OptimizerState.blocksize)
    }

    /// Bytes held by the state (the states and their absmax).
    public var bytes: Int {
        state1.byteCount + (state2?.byteCount ?? 0) + (absmax1?.byteCount ?? 0) + (absmax2?.byteCount ?? 0)
    }
}
