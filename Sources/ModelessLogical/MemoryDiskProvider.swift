import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// A logical block device backed by memory: the simplest provider, for trying stacks and for
/// consumers' tests. Optionally slow (`delayNanoseconds` per request) to keep requests in
/// flight. Tracks the consumers that have it open, and counts closes (keeping only the most
/// recent, so that a disk serving for months holds no more than a few KiB of them).
public final class MemoryDiskProvider: @unchecked Sendable {
    /// Bytes per block.
    public let blockSize: Int
    /// Blocks on the disk.
    public let blockCount: UInt64
    private let lock = ConditionLock()
    private var storage: [UInt8]
    private let delayNanoseconds: UInt64
    private var openConsumers: Set<ConsumerID> = []
    private var closedConsumers: [ConsumerID] = []
    private var closeCount = 0
    private var unmatchedCloseCount = 0
    /// How many of the latest closes ``closes`` keeps.
    public static let recentCloses = 4096
    private var requestsServed = 0

    /// A zero-filled disk of `blockCount` blocks of `blockSize` bytes, answering each request
    /// after `delayNanoseconds`.
    public init(blockCount: UInt64, blockSize: Int = 512, delayNanoseconds: UInt64 = 0) {
        self.blockSize = blockSize
        self.blockCount = blockCount
        self.delayNanoseconds = delayNanoseconds
        storage = Array(repeating: 0, count: Int(blockCount) * blockSize)
    }

    /// The handlers to create the device with.
    public var handlers: LogicalDeviceHandlers {
        LogicalDeviceHandlers(
            open: { consumer in self.lock.withLock { _ = self.openConsumers.insert(consumer) } },
            close: { consumer in
                self.lock.withLock {
                    if self.openConsumers.remove(consumer) == nil { self.unmatchedCloseCount += 1 }
                    if self.closedConsumers.count == Self.recentCloses { self.closedConsumers.removeFirst(Self.recentCloses / 2) }
                    self.closedConsumers.append(consumer)
                    self.closeCount += 1
                }
            },
            request: { context in try self.handle(context.block) })
    }

    /// Consumers that have the disk open.
    public var consumers: Set<ConsumerID> { lock.withLock { openConsumers } }
    /// The latest close handler calls, in order: all of them up to ``recentCloses``, and at
    /// least the last half of that many after (a consumer twice would be a bug).
    public var closes: [ConsumerID] { lock.withLock { closedConsumers } }
    /// Close handler calls so far.
    public var closeTotal: Int { lock.withLock { closeCount } }
    /// Close handler calls for a consumer that did not have the disk open (a second close of
    /// one, say): 0 unless the framework has a bug.
    public var unmatchedCloses: Int { lock.withLock { unmatchedCloseCount } }
    /// Requests answered so far.
    public var served: Int { lock.withLock { requestsServed } }

    func handle(_ block: ParameterBlock) throws {
        if delayNanoseconds > 0 {
            var pause = timespec(tv_sec: Int(delayNanoseconds / 1_000_000_000), tv_nsec: Int(delayNanoseconds % 1_000_000_000))
            nanosleep(&pause, nil)
        }
        switch block.requestType {
        case .read:
            let range = try BlockRequest.range(of: block, blockSize: blockSize, totalBlocks: blockCount)
            let start = Int(range.firstBlock) * blockSize
            try lock.withLock { () throws(LogicalDeviceError) in
                try block.output.setBytes(storage[start..<start + range.blockCount * blockSize])
                requestsServed += 1
            }
        case .write:
            let range = try BlockRequest.range(of: block, blockSize: blockSize, totalBlocks: blockCount)
            let start = Int(range.firstBlock) * blockSize
            let data = try block.input.read(at: BlockRequest.dataOffset, count: range.blockCount * blockSize)
            lock.withLock {
                storage.replaceSubrange(start..<start + data.count, with: data)
                requestsServed += 1
            }
        case .control where block.code == BlockRequest.geometryCode:
            try BlockRequest.answerGeometry(block, blocks: blockCount, blockSize: blockSize)
        case .control where block.code == BlockRequest.flushCode:
            break
        default:
            throw LogicalDeviceError(.requestFailed, "a block device answers read, write, geometry and flush, not \(String(describing: block.requestType)) code \(block.code)")
        }
    }
}
