/// A block service that is itself a consumer: it provides a window of another logical block
/// device (blocks `first ..< first + count` of the device below), forwarding each request
/// down the stack in the next block of the originator's parameter chain.
public final class PartitionProvider: @unchecked Sendable {
    /// The device below, open through the container given at init.
    public let lower: LogicalDeviceHandle
    /// The first block of the device below that the partition shows, as its block 0.
    public let firstBlock: UInt64
    /// Blocks in the partition.
    public let blockCount: UInt64
    /// Bytes per block, the device below's.
    public let blockSize: Int
    private let container: LogicalContainer

    /// Opens `lowerName` through `container` and checks the window fits it.
    public init(container: LogicalContainer, lower lowerName: String, firstBlock: UInt64, blockCount: UInt64?) throws(LogicalDeviceError) {
        self.container = container
        lower = try container.open(lowerName)
        let query = try ParameterChain(blocks: 1, inputCapacity: 0, outputCapacity: 16).claimBlock()
        try BlockRequest.prepareGeometry(query)
        try container.send(lower, query)
        let (total, size) = try BlockRequest.geometry(of: query)
        guard firstBlock < total else {
            try? container.close(lower)
            throw LogicalDeviceError(.requestFailed, "\(lowerName) has \(total) blocks: a partition cannot start at block \(firstBlock)")
        }
        self.firstBlock = firstBlock
        self.blockCount = min(blockCount ?? (total - firstBlock), total - firstBlock)
        self.blockSize = size
    }

    /// The handlers to create the partition's device with.
    public var handlers: LogicalDeviceHandlers {
        LogicalDeviceHandlers(request: { context in try self.handle(context) })
    }

    private func handle(_ context: RequestContext) throws {
        let block = context.block
        if block.requestType == .control && block.code == BlockRequest.geometryCode {
            try BlockRequest.answerGeometry(block, blocks: blockCount, blockSize: blockSize)
            return
        }
        let below = try context.chain.claimBlock()
        below.requestType = block.requestType
        below.code = block.code
        if block.requestType == .read || block.requestType == .write {
            let range = try BlockRequest.range(of: block, blockSize: blockSize, totalBlocks: blockCount)
            try below.input.copy(from: block.input, count: block.input.length)
            try below.input.store(firstBlock + range.firstBlock, at: 0)
        }
        try context.container.send(lower, below)
        try block.output.copy(from: below.output, count: below.output.length)
    }
}
