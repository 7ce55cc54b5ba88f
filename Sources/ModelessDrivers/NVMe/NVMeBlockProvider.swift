import ModelessLogical
import ModelessSystem

/// The NVMe driver as the provider of a logical block device: reads, writes, geometry and
/// flush requests (``BlockRequest``'s layout) become commands on namespace 1. Requests from
/// several consumers are taken one at a time.
public final class NVMeBlockProvider: @unchecked Sendable {
    public let controller: NVMeController
    private let lock = ConditionLock()
    private let blockSize: Int
    private let blockCount: UInt64

    public init(controller: NVMeController) throws {
        guard let identity = controller.identity else {
            throw LogicalDeviceError(.requestFailed, "the NVMe controller has no identified namespace to provide")
        }
        self.controller = controller
        blockSize = identity.blockSize
        blockCount = identity.blockCount
    }

    /// The handlers to create the logical device with.
    public var handlers: LogicalDeviceHandlers {
        LogicalDeviceHandlers(request: { context in try self.handle(context.block) })
    }

    private func handle(_ block: ParameterBlock) throws {
        switch block.requestType {
        case .read:
            let range = try BlockRequest.range(of: block, blockSize: blockSize, totalBlocks: blockCount)
            let data = try lock.withLock { try controller.read(lba: range.firstBlock, blocks: range.blockCount) }
            try block.output.setBytes(data)
        case .write:
            let range = try BlockRequest.range(of: block, blockSize: blockSize, totalBlocks: blockCount)
            let data = try block.input.read(at: BlockRequest.dataOffset, count: range.blockCount * blockSize)
            try lock.withLock { try controller.write(lba: range.firstBlock, data) }
        case .control where block.code == BlockRequest.geometryCode:
            try BlockRequest.answerGeometry(block, blocks: blockCount, blockSize: blockSize)
        case .control where block.code == BlockRequest.flushCode:
            try lock.withLock { try controller.flush() }
        default:
            throw LogicalDeviceError(.requestFailed, "the NVMe block device answers read, write, geometry and flush")
        }
    }
}
