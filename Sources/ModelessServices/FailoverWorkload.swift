import ModelessLogical
import ModelessSupervision
import ModelessSystem

/// The workload of `modeless bench failover`: one thread writing blocks of a supervised block
/// service through a ``ServiceClient`` and reading each back at once, remembering what every
/// block should hold.
package final class FailoverWorkload: @unchecked Sendable {
    /// The client of the service, which fails over between its instances.
    package let client: ServiceClient
    /// The service device's block size, in bytes.
    package let blockSize: Int
    private let container: LogicalContainer
    private let blocks: Int
    private let lock = ConditionLock()
    private var expected: [Int: UInt64] = [:]
    /// Writes acknowledged (each executed once).
    package private(set) var writes = 0
    /// Reads that returned what the block should hold.
    package private(set) var verifiedReads = 0
    /// Each failover the client made, with when it made it (monotonic nanoseconds).
    package private(set) var failovers: [(ServiceClient.Failover, UInt64)] = []
    private var completions = 0
    private var failureText: String?
    private var stopping = false
    private var thread: SystemThread?

    /// A workload on `device` of the service `instances` provide, over blocks 0 to `blocks` - 1,
    /// waiting up to `recoverySeconds` for an instance to answer after a failure.
    package init(instances: [String], device: String, blocks: Int, recoverySeconds: Double) throws {
        container = try LogicalContainer(name: "failover-bench-\(getpid())", serving: false)
        client = ServiceClient(container: container, instances: instances, device: device, recoverySeconds: recoverySeconds)
        let chain = try ParameterChain(capacities: [.init(input: 0, output: 16)])
        let query = try chain.claimBlock()
        try BlockRequest.prepareGeometry(query)
        try client.send(query)
        let geometry = try BlockRequest.geometry(of: query)
        guard UInt64(blocks) <= geometry.blocks else {
            throw LogicalDeviceError(.requestFailed, "--blocks \(blocks) is more than the device's \(geometry.blocks) blocks")
        }
        blockSize = geometry.blockSize
        self.blocks = blocks
        client.onFailover = { [unowned self] event in
            lock.withLock {
                failovers.append((event, monotonicNanoseconds()))
                lock.broadcast()
            }
        }
    }

    /// What went wrong (a read that did not match, a request that failed), if anything did.
    package var failure: String? { lock.withLock { failureText } }

    /// Starts writing and reading back on a thread of its own.
    package func start() {
        thread = try? SystemThread(name: "failover load") { [unowned self] in self.run() }
    }

    /// Stops the thread and waits for it.
    package func stop() {
        lock.withLock { stopping = true }
        thread?.join()
        thread = nil
    }

    /// Waits for a request to complete after this call; false after `seconds`.
    package func waitForProgress(seconds: Double) -> Bool {
        let deadline = monotonicNanoseconds() + UInt64(seconds * 1e9)
        return lock.withLock {
            let start = completions
            while completions == start && failureText == nil {
                let now = monotonicNanoseconds()
                guard now < deadline else { return false }
                _ = lock.wait(nanoseconds: deadline - now)
            }
            return failureText == nil
        }
    }

    /// Waits for failover number `count + 1` and returns when its request was answered.
    package func waitForFailover(after count: Int, seconds: Double) -> UInt64? {
        let deadline = monotonicNanoseconds() + UInt64(seconds * 1e9)
        return lock.withLock {
            while failovers.count <= count && failureText == nil {
                let now = monotonicNanoseconds()
                guard now < deadline else { return nil }
                _ = lock.wait(nanoseconds: deadline - now)
            }
            return failovers.count > count ? failovers[count].1 : nil
        }
    }

    /// Reads every written block and compares it with what was last written there.
    package func verifyAll() -> (checked: Int, mismatches: Int) {
        let snapshot = lock.withLock { expected }
        var mismatches = 0
        for (block, write) in snapshot.sorted(by: { $0.key < $1.key }) {
            if (try? read(block)) != Self.pattern(write: write, block: block, size: blockSize) { mismatches += 1 }
        }
        return (snapshot.count, mismatches)
    }

    private func run() {
        var generator = SystemRandomNumberGenerator()
        var write: UInt64 = 0
        while !lock.withLock({ stopping }) {
            write += 1
            let block = Int.random(in: 0..<blocks, using: &generator)
            let data = Self.pattern(write: write, block: block, size: blockSize)
            do {
                let chain = try ParameterChain(capacities: [.init(input: BlockRequest.dataOffset + blockSize, output: blockSize)])
                let request = try chain.claimBlock()
                try BlockRequest.prepareWrite(request, first: UInt64(block), data: data, blockSize: blockSize)
                try client.send(request)
                lock.withLock {
                    expected[block] = write
                    writes += 1
                }
                guard try read(block) == data else {
                    fail("block \(block) read back other data than write \(write) put there")
                    return
                }
                lock.withLock {
                    verifiedReads += 1
                    completions += 1
                    lock.broadcast()
                }
            } catch {
                fail("write \(write) to block \(block): \(error)")
                return
            }
        }
    }

    private func read(_ block: Int) throws -> [UInt8] {
        let chain = try ParameterChain(capacities: [.init(input: 16, output: blockSize)])
        let request = try chain.claimBlock()
        try BlockRequest.prepareRead(request, first: UInt64(block), count: 1)
        try client.send(request)
        return request.output.bytes
    }

    private func fail(_ text: String) {
        lock.withLock {
            if failureText == nil { failureText = text }
            lock.broadcast()
        }
    }

    /// What write number `write` puts in `block`: both numbers, then bytes derived from them.
    package static func pattern(write: UInt64, block: Int, size: Int) -> [UInt8] {
        var state = write &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(block)
        var bytes = [UInt8](repeating: 0, count: size)
        for index in 0..<size {
            if index % 8 == 0 {
                state ^= state >> 30
                state &*= 0xBF58_476D_1CE4_E5B9
                state ^= state >> 27
            }
            bytes[index] = UInt8(truncatingIfNeeded: state >> (8 * (index % 8)))
        }
        withUnsafeBytes(of: write.littleEndian) { for (index, byte) in $0.enumerated() where index < size { bytes[index] = byte } }
        return bytes
    }
}

#if canImport(Glibc)
import Glibc
#endif
