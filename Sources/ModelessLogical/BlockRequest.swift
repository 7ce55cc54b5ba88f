/// The layout of requests to a logical block device, shared by every block provider (the
/// NVMe driver's, the memory disk) and their consumers.
///
/// - read: input `UInt64` first block, `UInt32` block count; output the data.
/// - write: input `UInt64` first block, `UInt32` block count, the data from byte 16.
/// - control ``geometryCode``: output `UInt64` block count, `UInt32` block size.
/// - control ``flushCode``: no areas.
public enum BlockRequest {
    /// The control code that asks a block device for its geometry (block count and size).
    public static let geometryCode: UInt32 = 1
    /// The control code that asks a block device to make written data durable.
    public static let flushCode: UInt32 = 2
    /// Where a write's data starts in the input area.
    public static let dataOffset = 16

    /// A parsed read or write.
    public struct Range: Sendable, Equatable {
        /// The first block read or written.
        public var firstBlock: UInt64
        /// How many blocks.
        public var blockCount: Int
    }

    /// Fills `block` with a read of `count` blocks from `first`.
    public static func prepareRead(_ block: ParameterBlock, first: UInt64, count: Int) throws(LogicalDeviceError) {
        block.requestType = .read
        try block.input.setLength(0)
        try block.input.store(first, at: 0)
        try block.input.store(UInt32(count), at: 8)
        try block.output.setLength(0)
    }

    /// Fills `block` with a write of `data` (whole blocks) from `first`.
    public static func prepareWrite(_ block: ParameterBlock, first: UInt64, data: some Collection<UInt8>, blockSize: Int) throws(LogicalDeviceError) {
        guard blockSize > 0, data.count % blockSize == 0 else {
            throw LogicalDeviceError(.requestFailed, "a write must be whole \(blockSize)-byte blocks, not \(data.count) bytes")
        }
        block.requestType = .write
        try block.input.setLength(0)
        try block.input.store(first, at: 0)
        try block.input.store(UInt32(data.count / blockSize), at: 8)
        try block.input.write(data, at: dataOffset)
        try block.output.setLength(0)
    }

    /// Fills `block` with a geometry query.
    public static func prepareGeometry(_ block: ParameterBlock) throws(LogicalDeviceError) {
        block.requestType = .control
        block.code = geometryCode
        try block.input.setLength(0)
        try block.output.setLength(0)
    }

    /// The range a read or write asks for, checked against the device's size.
    public static func range(of block: ParameterBlock, blockSize: Int, totalBlocks: UInt64) throws(LogicalDeviceError) -> Range {
        let first = try block.input.load(UInt64.self, at: 0)
        let count = Int(try block.input.load(UInt32.self, at: 8))
        guard count > 0, first < totalBlocks, UInt64(count) <= totalBlocks - first else {
            throw LogicalDeviceError(.requestFailed, "blocks \(first)..<\(first &+ UInt64(count)) are outside the device's \(totalBlocks) blocks")
        }
        let bytes = count * blockSize
        if block.requestType == .read, bytes > block.output.capacity {
            throw LogicalDeviceError(.tooLarge, "reading \(bytes) bytes needs an output area that large, not \(block.output.capacity)")
        }
        if block.requestType == .write, block.input.length != dataOffset + bytes {
            throw LogicalDeviceError(.requestFailed, "a write of \(count) blocks carries \(bytes) bytes of data, not \(block.input.length - dataOffset)")
        }
        return Range(firstBlock: first, blockCount: count)
    }

    /// The geometry an answered geometry query reports.
    public static func geometry(of block: ParameterBlock) throws(LogicalDeviceError) -> (blocks: UInt64, blockSize: Int) {
        (try block.output.load(UInt64.self, at: 0), Int(try block.output.load(UInt32.self, at: 8)))
    }

    /// Answers a geometry query.
    public static func answerGeometry(_ block: ParameterBlock, blocks: UInt64, blockSize: Int) throws(LogicalDeviceError) {
        try block.output.store(blocks, at: 0)
        try block.output.store(UInt32(blockSize), at: 8)
    }
}
