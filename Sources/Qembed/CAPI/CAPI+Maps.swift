import CQembed
import QembedCore

/// Copies a 256-entry map into a caller's buffer.
private func write(_ map: [Float], to code: UnsafeMutablePointer<Float>) {
    map.withUnsafeBufferPointer { code.update(from: $0.baseAddress!, count: $0.count) }
}

@c @implementation
public func qembed_create_dynamic_map(_ is_signed: Bool, _ max_exponent_bits: CInt, _ total_bits: CInt,
                                      _ code: UnsafeMutablePointer<Float>!) -> qembed_status {
    capi { () throws(QembedError) in
        let out = try need(code, "code")
        write(try QuantMap.dynamic(signed: is_signed, maxExponentBits: Int(max_exponent_bits), totalBits: Int(total_bits)), to: out)
    }
}

@c @implementation
public func qembed_create_linear_map(_ is_signed: Bool, _ total_bits: CInt, _ add_zero: Bool,
                                     _ code: UnsafeMutablePointer<Float>!) -> qembed_status {
    capi { () throws(QembedError) in
        let out = try need(code, "code")
        write(try QuantMap.linear(signed: is_signed, totalBits: Int(total_bits), addZero: add_zero), to: out)
    }
}

@c @implementation
public func qembed_create_fp8_map(_ is_signed: Bool, _ exponent_bits: CInt, _ precision_bits: CInt, _ total_bits: CInt,
                                  _ code: UnsafeMutablePointer<Float>!) -> qembed_status {
    capi { () throws(QembedError) in
        let out = try need(code, "code")
        write(try QuantMap.fp8(signed: is_signed, exponentBits: Int(exponent_bits),
                               precisionBits: Int(precision_bits), totalBits: Int(total_bits)), to: out)
    }
}

@c @implementation
public func qembed_create_normal_map(_ offset: Double, _ use_extra_value: Bool,
                                     _ code: UnsafeMutablePointer<Float>!) -> qembed_status {
    capi { () throws(QembedError) in
        let out = try need(code, "code")
        write(try QuantMap.normal(offset: offset, useExtraValue: use_extra_value), to: out)
    }
}

@c @implementation
public func qembed_get_4bit_code(_ quant_type: CInt, _ code: UnsafeMutablePointer<Float>!) -> qembed_status {
    capi { () throws(QembedError) in
        let t = try fourBitType(quant_type)
        write(QuantMap.fourBit(t), to: try need(code, "code"))
    }
}

func fourBitType(_ raw: CInt) throws(QembedError) -> FourBitType {
    guard let t = FourBitType(rawValue: raw) else {
        throw .unsupported("quant_type: unknown value \(raw) (use QEMBED_QUANT_FP4 or QEMBED_QUANT_NF4)")
    }
    return t
}
