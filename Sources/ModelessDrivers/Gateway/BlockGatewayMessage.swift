/// The messages of the network block gateway's UDP protocol (port 7470 by default), all
/// integers big-endian:
///
/// - request: `MLBK`, operation (1 read, 2 write), 0, `UInt32` tag, `UInt64` first block,
///   `UInt16` block count, then for a write the data;
/// - reply: `MLBK`, operation | 0x80, status (0 for success, else a `LogicalDeviceError.Kind`),
///   the same tag, first block and count, then for a successful read the data.
///
/// A request and its reply fit one Ethernet frame: at most ``maximumData`` bytes of data.
public struct BlockGatewayMessage: Equatable, Sendable {
    public enum Operation: UInt8, Sendable {
        case read = 1
        case write = 2
    }

    public static let magic: [UInt8] = Array("MLBK".utf8)
    public static let headerSize = 20
    /// The most data one message carries (two 512-byte blocks).
    public static let maximumData = 1024

    public var operation: Operation
    public var isReply: Bool
    public var status: UInt8
    public var tag: UInt32
    public var firstBlock: UInt64
    public var blockCount: UInt16
    public var data: [UInt8]

    public init(operation: Operation, isReply: Bool = false, status: UInt8 = 0, tag: UInt32, firstBlock: UInt64,
                blockCount: UInt16, data: [UInt8] = []) {
        self.operation = operation
        self.isReply = isReply
        self.status = status
        self.tag = tag
        self.firstBlock = firstBlock
        self.blockCount = blockCount
        self.data = data
    }

    /// Parses a message; nil if it is not one (wrong magic, operation, or size).
    public init?(_ bytes: [UInt8]) {
        guard bytes.count >= Self.headerSize, Array(bytes[0..<4]) == Self.magic,
              let operation = Operation(rawValue: bytes[4] & 0x7F), bytes.count - Self.headerSize <= Self.maximumData else { return nil }
        func integer(_ range: Range<Int>) -> UInt64 { bytes[range].reduce(0) { $0 << 8 | UInt64($1) } }
        self.operation = operation
        isReply = bytes[4] & 0x80 != 0
        status = bytes[5]
        tag = UInt32(integer(6..<10))
        firstBlock = integer(10..<18)
        blockCount = UInt16(integer(18..<20))
        data = Array(bytes[Self.headerSize...])
    }

    /// The message's bytes.
    public var bytes: [UInt8] {
        func bigEndian<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
            (0..<MemoryLayout<T>.size).reversed().map { UInt8(truncatingIfNeeded: value >> ($0 * 8)) }
        }
        return Self.magic + [operation.rawValue | (isReply ? 0x80 : 0), status] + bigEndian(tag) + bigEndian(firstBlock)
            + bigEndian(blockCount) + data
    }
}
