#if canImport(Glibc)
import Glibc
#endif

/// A generated corpus with planted structure: `vocab` tokens in `clusters`
/// hidden clusters (token t is in cluster t % clusters; with `relabelled`,
/// one token in eight has moved to the next cluster), Zipf-distributed
/// frequencies, and sentences that mostly stay inside one cluster, so tokens
/// of a cluster co-occur.
struct DemoCorpus {
    let vocab: Int, clusters: Int
    /// The hidden cluster of each token.
    let clusterOf: [Int]
    var tokens: [Int32] = []
    var counts: [Int]
    /// Negative-sampling table (unigram^0.75).
    var negTable: [Int32] = []

    struct Rng {
        var s: UInt64
        mutating func next() -> UInt64 { s &+= 0x9E37_79B9_7F4A_7C15; var z = s; z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9; z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB; return z ^ (z >> 31) }
        mutating func uniform() -> Double { Double(next() >> 11) * 0x1p-53 }
        mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    }

    /// Tokens that change cluster in the relabelled corpus: one in eight.
    static func moves(_ t: Int, clusters: Int) -> Bool { (t / clusters) % 8 == 3 }

    init(vocab: Int, clusters: Int, length: Int, seed: UInt64, relabelled: Bool = false) {
        self.vocab = vocab; self.clusters = clusters
        clusterOf = (0..<vocab).map { t in relabelled && DemoCorpus.moves(t, clusters: clusters) ? (t + 1) % clusters : t % clusters }
        var rng = Rng(s: seed)
        // Zipf weights over a random permutation of the vocabulary.
        var perm = Array(0..<vocab)
        for i in stride(from: vocab - 1, to: 0, by: -1) { perm.swapAt(i, rng.below(i + 1)) }
        var weight = [Double](repeating: 0, count: vocab)
        for (rank, t) in perm.enumerated() { weight[t] = 1 / Double(rank + 10) }
        // Cumulative weights per cluster and overall.
        var perCluster = [[(Double, Int32)]](repeating: [], count: clusters)
        for t in 0..<vocab { perCluster[clusterOf[t]].append((weight[t], Int32(t))) }
        let cum = perCluster.map { list -> [(Double, Int32)] in var s = 0.0; return list.map { s += $0.0; return (s, $0.1) } }
        func draw(_ c: Int, _ rng: inout Rng) -> Int32 {
            let list = cum[c], u = rng.uniform() * list.last!.0
            var lo = 0, hi = list.count - 1
            while lo < hi { let m = (lo + hi) / 2; if list[m].0 < u { lo = m + 1 } else { hi = m } }
            return list[lo].1
        }
        counts = [Int](repeating: 0, count: vocab)
        tokens.reserveCapacity(length)
        while tokens.count < length {
            let c = rng.below(clusters)
            for _ in 0..<16 {
                let t = rng.uniform() < 0.85 ? draw(c, &rng) : draw(rng.below(clusters), &rng)
                tokens.append(t)
                counts[Int(t)] += 1
            }
        }
        var total = 0.0
        let pw = counts.map { pow(Double($0), 0.75) }
        for v in pw { total += v }
        negTable.reserveCapacity(1 << 20)
        for t in 0..<vocab {
            let n = Int((pw[t] / total * Double(1 << 20)).rounded())
            negTable.append(contentsOf: repeatElement(Int32(t), count: n))
        }
        if negTable.isEmpty { negTable = [0] }
    }
}

/// One skip-gram batch with negative sampling: centers, (1 + negatives)
/// targets per center, and the loss's gradients with respect to the
/// looked-up center vectors u and target vectors v.
struct SkipGramBatch {
    let batch: Int, dim: Int, window: Int, negatives: Int
    var centers: [Int64], targets: [Int64]
    var u: [Float], v: [Float], gu: [Float], gv: [Float]
    var pairs: Int { 1 + negatives }

    init(batch: Int, dim: Int, window: Int = 3, negatives: Int = 5) {
        self.batch = batch; self.dim = dim; self.window = window; self.negatives = negatives
        centers = [Int64](repeating: 0, count: batch)
        targets = [Int64](repeating: 0, count: batch * (1 + negatives))
        u = [Float](repeating: 0, count: batch * dim); gu = u
        v = [Float](repeating: 0, count: batch * (1 + negatives) * dim); gv = v
    }

    mutating func draw(_ corpus: DemoCorpus, _ rng: inout DemoCorpus.Rng) {
        for b in 0..<batch {
            let pos = window + rng.below(corpus.tokens.count - 2 * window)
            var off = 1 + rng.below(window)
            if rng.next() & 1 == 0 { off = -off }
            centers[b] = Int64(corpus.tokens[pos])
            targets[b * pairs] = Int64(corpus.tokens[pos + off])
            for k in 1...negatives { targets[b * pairs + k] = Int64(corpus.negTable[rng.below(corpus.negTable.count)]) }
        }
    }

    /// Mean logistic loss of the batch (u, v filled by the caller); fills gu and gv.
    mutating func lossAndGradients() -> Double {
        var loss = 0.0
        for b in 0..<batch {
            for k in 0..<dim { gu[b * dim + k] = 0 }
            for p in 0..<pairs {
                var s: Float = 0
                let vo = (b * pairs + p) * dim, uo = b * dim
                for k in 0..<dim { s += u[uo + k] * v[vo + k] }
                let label: Float = p == 0 ? 1 : 0
                let sig = 1 / (1 + expf(-s))
                loss -= Double(p == 0 ? logf(max(sig, 1e-7)) : logf(max(1 - sig, 1e-7)))
                let g = (sig - label) / Float(batch)
                for k in 0..<dim { gu[uo + k] += g * v[vo + k]; gv[vo + k] = g * u[uo + k] }
            }
        }
        return loss / Double(batch)
    }
}
