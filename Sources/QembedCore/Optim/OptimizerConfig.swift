/// Optimizer names, with the raw values of the C enum `qembed_optimizer_kind`.
public enum OptimizerKind: Int32, CaseIterable, Sendable {
    case adam = 0, adamw = 1, momentum = 2, lion = 3, rmsprop = 4, adagrad = 5

    public var name: String {
        switch self {
        case .adam: "adam"
        case .adamw: "adamw"
        case .momentum: "momentum"
        case .lion: "lion"
        case .rmsprop: "rmsprop"
        case .adagrad: "adagrad"
        }
    }

    /// Adam and AdamW keep two states (m, v); the others one.
    public var stateCount: Int { self == .adam || self == .adamw ? 2 : 1 }
}

/// Hyperparameters with bitsandbytes' defaults per optimizer.
public struct OptimizerConfig: Sendable {
    public var kind: OptimizerKind
    public var lr: Double
    public var beta1: Double
    public var beta2: Double
    public var eps: Double
    public var weightDecay: Double
    public var optimBits: Int
    public var min8bitSize: Int = 4096
    public var maxUnorm: Double = 0
    public var skipZeros: Bool = false

    /// bitsandbytes' defaults: Adam(W) lr 1e-3, betas (0.9, 0.999), eps 1e-8,
    /// AdamW weight_decay 1e-2; SGD momentum (beta1 = momentum); Lion lr 1e-4,
    /// betas (0.9, 0.99); RMSprop lr 1e-2, alpha 0.99 (beta1); Adagrad lr 1e-2, eps 1e-10.
    public static func defaults(_ kind: OptimizerKind, optimBits: Int = 32) -> OptimizerConfig {
        switch kind {
        case .adam: OptimizerConfig(kind: kind, lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, optimBits: optimBits)
        case .adamw: OptimizerConfig(kind: kind, lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 1e-2, optimBits: optimBits)
        case .momentum: OptimizerConfig(kind: kind, lr: 1e-3, beta1: 0.9, beta2: 0, eps: 0, weightDecay: 0, optimBits: optimBits)
        case .lion: OptimizerConfig(kind: kind, lr: 1e-4, beta1: 0.9, beta2: 0.99, eps: 0, weightDecay: 0, optimBits: optimBits)
        case .rmsprop: OptimizerConfig(kind: kind, lr: 1e-2, beta1: 0.99, beta2: 0, eps: 1e-8, weightDecay: 0, optimBits: optimBits)
        case .adagrad: OptimizerConfig(kind: kind, lr: 1e-2, beta1: 0, beta2: 0, eps: 1e-10, weightDecay: 0, optimBits: optimBits)
        }
    }

    /// Checks every field; the messages name the argument.
    public func validate() throws(QembedError) {
        for (name, v) in [("lr", lr), ("eps", eps), ("weight_decay", weightDecay), ("max_unorm", maxUnorm)] {
            guard v.isFinite else { throw QembedError(.nonFinite, "\(name) is \(v) (must be finite)") }
            guard v >= 0 else { throw .invalid("\(name) must be >= 0, got \(v)") }
        }
        for (name, v) in [("beta1", beta1), ("beta2", beta2)] {
            guard v >= 0 && v < 1 else { throw .invalid("\(name) must be in [0, 1), got \(v)") }
        }
        try OptimizerConfig.checkBits(optimBits)
        guard min8bitSize >= 0 else { throw .invalid("min_8bit_size must be >= 0, got \(min8bitSize)") }
        if kind == .momentum && beta1 == 0 { throw .unsupported("SGD without momentum is not supported (momentum must be > 0)") }
        if kind == .rmsprop && beta1 == 0 { throw .unsupported("RMSprop with alpha == 0 is not supported") }
    }

    /// This config with a parameter's overrides applied (they win).
    public func resolved(for p: Parameter) -> OptimizerConfig {
        var c = self
        let o = p.overrides
        if let v = o[.optimBits] { c.optimBits = Int(v) }
        if let v = o[.lr] { c.lr = v }
        if let v = o[.beta1] { c.beta1 = v }
        if let v = o[.beta2] { c.beta2 = v }
        if let v = o[.eps] { c.eps = v }
        if let v = o[.weightDecay] { c.weightDecay = v }
        return c
    }

    /// Optimizer state is 8 or 32 bits: the one check of every layer.
    public static func checkBits(_ bits: Int, argument: String = "optim_bits") throws(QembedError) {
        guard bits == 8 || bits == 32 else { throw .invalid("\(argument) must be 8 or 32, got \(bits)") }
    }
}
