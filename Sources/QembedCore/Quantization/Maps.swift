#if canImport(Glibc)
import Glibc
#endif

/// Quantization maps (codebooks): 256 float32 values sorted ascending, built
/// exactly as bitsandbytes 0.50.2 builds them (float32 arithmetic where
/// upstream uses float32 tensors, so every entry matches to the bit).
public enum QuantMap {
    public static let size = 256

    /// torch.linspace(start, end, steps) in float32: the first half counts up
    /// from `start`, the second half counts down from `end`.
    static func linspace(_ start: Float, _ end: Float, _ steps: Int) -> [Float] {
        if steps <= 0 { return [] }
        if steps == 1 { return [start] }
        let step = (end - start) / Float(steps - 1)
        let half = steps / 2
        return (0..<steps).map { i in
            i < half ? start + step * Float(i) : end - step * Float(steps - i - 1)
        }
    }

    /// bitsandbytes.functional.create_dynamic_map, for every argument it
    /// accepts: total_bits 1...8 (bitsandbytes also returns 512-entry maps for
    /// total_bits 9, which no 8-bit code can index), any max_exponent_bits >= 1
    /// (above total_bits - 1 the fraction items of the low exponents round down
    /// to none, as Python's int(2 ** e + 1) does), and 0 where upstream's
    /// code does not reach its unbound loop variable (total_bits 1).
    public static func dynamic(signed: Bool = true, maxExponentBits: Int = 7, totalBits: Int = 8) throws(QembedError) -> [Float] {
        guard (1...8).contains(totalBits) else {
            throw .invalid("total_bits: \(totalBits) is outside 1...8 (a map has 256 entries)")
        }
        let nonSignBits = totalBits - 1
        // additional_items = 2 ** (nonSignBits - maxExponentBits) - 1, when that is >= 1
        let additionalExponent = nonSignBits - maxExponentBits
        guard maxExponentBits >= 1 || additionalExponent <= 0 else {
            throw .invalid("max_exponent_bits: \(maxExponentBits) must be at least 1")
        }
        var data: [Float] = []
        func append(_ items: Int, _ i: Int) {
            guard items >= 2 else { return }
            let b = linspace(0.1, 1, items)
            let scale = Float(pow(10.0, Double(-(maxExponentBits - 1) + i)))
            for k in 0..<(items - 1) {
                let mean = (b[k] + b[k + 1]) / 2
                data.append(scale * mean)
                if signed { data.append(-(scale * mean)) }
            }
        }
        // Exponent i has 2 ** e + 1 fraction boundaries, e = i + nonSignBits -
        // maxExponentBits (+ 1 unsigned); for e < 0 just one, so no items:
        // only the last nonSignBits + 1 exponents can contribute.
        let lift = signed ? 0 : 1
        for i in max(0, maxExponentBits - nonSignBits - lift)..<max(0, maxExponentBits) {
            let e = i + nonSignBits - maxExponentBits + lift
            append((1 << e) + 1, i)
        }
        if additionalExponent >= 1 { append(1 << additionalExponent, maxExponentBits - 1) }
        data.append(0)
        data.append(1)
        guard data.count == 1 << totalBits else {
            throw .invalid("max_exponent_bits \(maxExponentBits) and total_bits \(totalBits) give \(data.count) values, not \(1 << totalBits) (bitsandbytes refuses them too)")
        }
        data += [Float](repeating: 0, count: size - data.count)
        return data.sorted()
    }

    /// bitsandbytes.functional.create_linear_map (not re-sorted, as upstream).
    public static func linear(signed: Bool = true, totalBits: Int = 8, addZero: Bool = true) throws(QembedError) -> [Float] {
        guard (0...8).contains(totalBits) else {
            throw .invalid("total_bits: \(totalBits) is outside 0...8 (a map has 256 entries)")
        }
        var total = 1 << totalBits
        if addZero || totalBits < 8 { total = signed ? total - 1 : total }
        let values = linspace(signed ? -1 : 0, 1, total)
        let gap = size - values.count
        if gap == 0 { return values }
        let l = values.count / 2
        return Array(values[..<l]) + [Float](repeating: 0, count: gap) + Array(values[l...])
    }

    /// bitsandbytes.functional.create_fp8_map.
    public static func fp8(signed: Bool = true, exponentBits: Int = 5, precisionBits: Int = 2, totalBits: Int = 8) throws(QembedError) -> [Float] {
        guard (1...8).contains(totalBits) else {
            throw .invalid("total_bits: \(totalBits) is outside 1...8 (a map has 256 entries)")
        }
        guard exponentBits >= (signed ? 1 : 0), precisionBits >= 0,
              exponentBits + precisionBits == totalBits - (signed ? 1 : 0) else {
            throw .invalid("exponent_bits \(exponentBits) + precision_bits \(precisionBits) + sign must equal total_bits \(totalBits)"
                           + (signed ? ", with exponent_bits >= 1" : ""))
        }
        // upstream's bias is 2 ** (exponent_bits - 1): 0.5 with no exponent bits
        let bias = exponentBits == 0 ? 0.5 : Double(1 << (exponentBits - 1))
        var values: [Double] = []
        for e in 0..<(1 << exponentBits) {
            for pattern in 0..<(1 << precisionBits) {
                var v: Double = e != 0 ? 1 : 0
                for bit in 0..<precisionBits where (pattern >> (precisionBits - 1 - bit)) & 1 == 1 {
                    v += pow(2.0, Double(-(bit + 1)))
                }
                v *= e == 0 ? pow(2.0, -bias) : pow(2.0, -(Double(e) - bias - 1))
                values.append(v)
                if signed { values.append(-v) }
            }
        }
        values.sort()
        values += [Double](repeating: 0, count: size - values.count)
        values.sort()
        let f = values.map { Float($0) }
        let mx = f.max()!
        guard mx.isFinite else {  // bitsandbytes returns inf / inf = NaN entries
            throw .invalid("exponent_bits \(exponentBits): the largest value overflows float32 (the map would hold NaN)")
        }
        return f.map { $0 / mx }
    }

    /// bitsandbytes.functional.create_normal_map: normal quantiles at float32
    /// linspace points, computed in double (no scipy), normalized in float32.
    public static func normal(offset: Double = 0.9677083, useExtraValue: Bool = true) throws(QembedError) -> [Float] {
        guard offset > 0.5 && offset < 1 && offset.isFinite else {
            throw .invalid("offset: \(offset) is outside (0.5, 1)")
        }
        let o = Float(offset)
        func ppf(_ steps: Int) -> [Double] {
            linspace(o, 0.5, steps).dropLast().map { normalQuantile(Double($0)) }
        }
        let v1 = ppf(useExtraValue ? 9 : 8)
        let v3 = ppf(8).map { -$0 }
        let zeros = [Double](repeating: 0, count: size - v1.count - v3.count)
        var values = (v1 + zeros + v3).map { Float($0) }
        values.sort()
        let mx = values.max()!
        return values.map { $0 / mx }
    }

    /// The 16 levels of a 4-bit type in index order (bitsandbytes get_4bit_type).
    public static func fourBit(_ type: FourBitType) -> [Float] {
        switch type {
        case .nf4: return nf4Levels
        case .fp4: return fp4Levels
        }
    }

    static let nf4Levels: [Float] = [
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
        -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
        0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
        0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
    ]

    static let fp4Levels: [Float] = {
        // Index 8 is +0 as in bitsandbytes (its table holds the integer -0).
        let raw: [Float] = [0, 0.0625, 8, 12, 4, 6, 2, 3, 0, -0.0625, -8, -12, -4, -6, -2, -3]
        return raw.map { $0 / 12 }
    }()

    /// The signed dynamic map (bitsandbytes' default code), built once.
    public static let signedDynamic: [Float] = try! dynamic(signed: true)
    /// The unsigned dynamic map (optimizer state 2), built once.
    public static let unsignedDynamic: [Float] = try! dynamic(signed: false)
}

/// 4-bit data types with the raw values of the C enum `qembed_quant_type`.
public enum FourBitType: Int32, Sendable, CaseIterable {
    case fp4 = 0, nf4 = 1
    public var name: String { self == .fp4 ? "fp4" : "nf4" }
    public init?(name: String) {
        switch name { case "fp4": self = .fp4; case "nf4": self = .nf4; default: return nil }
    }
}

/// Inverse of the standard normal CDF, accurate to double precision:
/// Acklam's rational approximation refined by two Halley steps on erfc.
public func normalQuantile(_ p: Double) -> Double {
    precondition(p > 0 && p < 1)
    let a = [-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
             1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00]
    let b = [-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
             6.680131188771972e+01, -1.328068155288572e+01]
    let c = [-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
             -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00]
    let d = [7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
             3.754408661907416e+00]
    let plow = 0.02425
    var x: Double
    if p < plow {
        let q = (-2 * log(p)).squareRoot()
        x = (((((c[0]*q+c[1])*q+c[2])*q+c[3])*q+c[4])*q+c[5]) / ((((d[0]*q+d[1])*q+d[2])*q+d[3])*q+1)
    } else if p <= 1 - plow {
        let q = p - 0.5, r = q * q
        x = (((((a[0]*r+a[1])*r+a[2])*r+a[3])*r+a[4])*r+a[5])*q / (((((b[0]*r+b[1])*r+b[2])*r+b[3])*r+b[4])*r+1)
    } else {
        let q = (-2 * log(1 - p)).squareRoot()
        x = -(((((c[0]*q+c[1])*q+c[2])*q+c[3])*q+c[4])*q+c[5]) / ((((d[0]*q+d[1])*q+d[2])*q+d[3])*q+1)
    }
    for _ in 0..<2 {
        let e = 0.5 * erfc(-x / 2.0.squareRoot()) - p
        let u = e * (2 * Double.pi).squareRoot() * exp(x * x / 2)
        x = x - u / (1 + x * u / 2)
    }
    return x
}

extension QuantMap {
    /// The signed dynamic map in stable storage, for kernels taking a pointer.
    public static let signedDynamicPointer: UnsafePointer<Float> = {
        let p = UnsafeMutablePointer<Float>.allocate(capacity: 256)
        for i in 0..<256 { p[i] = signedDynamic[i] }
        return UnsafePointer(p)
    }()

    /// The unsigned dynamic map in stable storage.
    public static let unsignedDynamicPointer: UnsafePointer<Float> = {
        let p = UnsafeMutablePointer<Float>.allocate(capacity: 256)
        for i in 0..<256 { p[i] = unsignedDynamic[i] }
        return UnsafePointer(p)
    }()
}
