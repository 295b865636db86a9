/// Calls `body(b, lo, hi)` for each run lo ..< hi of the elements
/// from ..< from + count that lies inside one block b of `blocksize`
/// elements, in order: how a kernel walks a piece of its output that may
/// start and end inside blocks.
@inline(__always)
func forEachBlockRun(_ from: Int, _ count: Int, blocksize: Int, _ body: (Int, Int, Int) -> Void) {
    var i = from
    let end = from + count
    while i < end {
        let b = i / blocksize
        let stop = min(end, (b + 1) * blocksize)
        body(b, i, stop)
        i = stop
    }
}
