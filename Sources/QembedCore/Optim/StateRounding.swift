/// How the 8-bit optimizer state is rounded: the exact nearest-code rule of
/// `quantize_blockwise`, with one exception for the states that feed a
/// square root in a denominator.
///
/// The exact rule (CodeSearch) sends a value to the nearest code; in a block
/// whose largest second moment is A, every v < A * code[1] / 2 becomes 0
/// (unsigned dynamic map: code[1] = 3.25e-7). Embedding gradients touch a few
/// rows: an element with |g| ~ 1e-4 beside |g| ~ 4 in its block has
/// v = (1 - beta2) g^2 ~ 1e-9 A, rounds to v = 0, while its first moment
/// m = (1 - beta1) g (~1e-4 of its block) keeps a code. Adam's next update,
/// lr * m / (sqrt(0) / c2 + eps) with eps = 1e-8, then moves the weight by
/// hundreds.
///
/// The rule (`floorPositive`): a positive value of such a state never rounds
/// to the zero code; it takes the smallest positive code instead. Applied to
/// Adam/AdamW's second moment (state2, unsigned map) and to RMSprop's and
/// Adagrad's accumulated square (state1, signed map). Every other value keeps
/// its exact nearest code. Then the quantized v is never far below the true
/// one (>= the true v, or within the map's rounding), so |m| / sqrt(v) keeps
/// Adam's bound (|m| <= (1-b1) / ((1-b2)^0.5 (1 - b1/b2^0.5)) sqrt(v)) up to
/// the rounding of the two codes.
///
/// Why not bitsandbytes' rules: its CPU path (a 65536-bin lookup table)
/// happens to send tiny values to a small nonzero code, by approximation;
/// its CUDA kernel keeps the first moment's quantized sign equal to the
/// float's, which matters for its approximate search (an exact nearest code
/// never has the opposite sign; a first moment that rounds to zero stops the
/// update, as the float one decays). Raising every nonzero first moment to
/// the smallest code was rejected: such a floor never decays, so a row that
/// is never touched again would keep moving.
///
/// A state loaded from elsewhere (a checkpoint written before this rule, or
/// bitsandbytes' own state) may hold v at the zero code beside a nonzero m;
/// `repairLoaded` raises those to the smallest positive code, which is what
/// the rule would have stored (m != 0 means some past gradient was nonzero,
/// so v > 0).
enum StateRounding {
    /// Index of 0 in the signed dynamic map (127) and the unsigned one (0).
    static let zeroSigned = UInt8(QuantMap.signedDynamic.firstIndex(of: 0)!)
    static let zeroUnsigned = UInt8(QuantMap.unsignedDynamic.firstIndex(of: 0)!)

    /// After the exact codes q of t are stored: every positive t at the zero
    /// code `z` takes code z + 1 (the smallest positive one). Branch-free.
    @inline(__always)
    static func floorPositive(_ t: UnsafePointer<Float>, _ q: UnsafeMutablePointer<UInt8>, _ count: Int, zero z: UInt8) {
        for j in 0..<count {
            let raise: UInt8 = q[j] == z && t[j] > 0 ? 1 : 0
            q[j] = q[j] &+ raise
        }
    }

    /// The repair of a loaded two-state (Adam) 8-bit state: v at its zero
    /// code where m is not at its zero code becomes the smallest positive
    /// code. Returns how many elements were raised.
    @discardableResult
    static func repairLoaded(q1: UnsafePointer<UInt8>, q2: UnsafeMutablePointer<UInt8>, count: Int) -> Int {
        var raised = 0
        for j in 0..<count where q2[j] == zeroUnsigned && q1[j] != zeroSigned {
            q2[j] = zeroUnsigned + 1
            raised += 1
        }
        return raised
    }
}
