import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// A logical block device backed by memory: the simplest provider, for trying stacks and for
/// consumers' tests. Optionally slow (`delayNanoseconds` per request) to keep requests in
/// flight. Tracks each consumer's requests in progress, and counts opens and closes.
public final class MemoryDiskProvider: @unchecked Sendable {
    public let blockSize: Int
    public let blockCount: UInt64
    private let lock = ConditionLock()
    private var storage: [UInt8]
    private let delayNanoseconds: UInt64
    private var openConsumers: Set<ConsumerID> = []
    private var closedConsumers: [ConsumerID] = []
    private var requestsServed = 0

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
                    self.openConsumers.remove(consumer)
                    self.closedConsumers.append(consumer)
                }
            },
            request: { context in try self.handle(context.block) })
    }

    /// Consumers that have the disk open.
    public var consumers: Set<ConsumerID> { lock.withLock { openConsumers } }
    /// Every close handler call so far, in order (a consumer twice would be a bug).
    public var closes: [ConsumerID] { lock.withLock { closedConsumers } }
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
