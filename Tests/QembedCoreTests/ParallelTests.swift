import XCTest
@testable import QembedCore

/// Parallel.forEachBlock: every item exactly once, in disjoint blocks of the
/// asked size, on several threads; one call over everything when nested or
/// on one thread.
final class ParallelTests: XCTestCase {
    override func tearDown() { try? Parallel.setThreadCount(0) }

    func testEveryItemOnceInBlocks() throws {
        for threads in [1, 2, 3] {
            try Parallel.setThreadCount(threads)
            for (count, block) in [(0, 4), (1, 4), (1000, 7), (1000, 1000), (1000, 5000), (4097, 64)] {
                let hits = UnsafeMutablePointer<Int>.allocate(capacity: max(1, count))
                hits.initialize(repeating: 0, count: max(1, count))
                defer { hits.deallocate() }
                let calls = UnsafeMutablePointer<Int>.allocate(capacity: 1)
                calls.initialize(to: 0)
                defer { calls.deallocate() }
                let lock = NSLock()
                Parallel.forEachBlock(count, block: block, grain: 1) { range in
                    for i in range { hits[i] += 1 }  // disjoint blocks: no two bodies touch one item
                    lock.lock(); calls.pointee += 1; lock.unlock()
                    if threads > 1 && count > block {
                        XCTAssertLessThanOrEqual(range.count, block, "threads \(threads) count \(count)")
                        XCTAssertEqual(range.lowerBound % block, 0)
                    }
                }
                XCTAssertEqual((0..<count).filter { hits[$0] != 1 }.count, 0, "threads \(threads) count \(count) block \(block)")
                if count == 0 { XCTAssertEqual(calls.pointee, 0) }
                if threads == 1 && count > 0 { XCTAssertEqual(calls.pointee, 1, "one thread: one call over everything") }
                if threads > 1 && count > 0 { XCTAssertEqual(calls.pointee, min(count, (count + block - 1) / block)) }
            }
        }
    }

    func testNestedLoopRunsInline() throws {
        try Parallel.setThreadCount(2)
        let inner = UnsafeMutablePointer<Int>.allocate(capacity: 2)
        inner.initialize(repeating: 0, count: 2)
        defer { inner.deallocate() }
        Parallel.forEachChunk(2, grain: 1) { outer in
            for o in outer {
                Parallel.forEachBlock(100, block: 10, grain: 1) { range in
                    XCTAssertEqual(range, 0..<100)  // inside another loop: one call, no nested dispatch
                    inner[o] += 1
                }
            }
        }
        XCTAssertEqual(inner[0], 1)
        XCTAssertEqual(inner[1], 1)
    }
}
