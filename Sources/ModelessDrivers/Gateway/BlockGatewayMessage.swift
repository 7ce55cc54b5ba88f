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
    /// What a request asks for: read blocks, or write the data that follows the header.
    public enum Operation: UInt8, Sendable {
        case read = 1
        case write = 2
    }

    /// The four bytes every message starts with, `MLBK`.
    public static let magic: [UInt8] = Array("MLBK".utf8)
    /// Bytes before the data: magic (4), operation (1), status (1), tag (4), first block (8) and
    /// block count (2).
    public static let headerSize = 20
    /// The most data one message carries (two 512-byte blocks).
    public static let maximumData = 1024

    /// Read or write.
    public var operation: Operation
    /// A reply (operation | 0x80 on the wire) rather than a request.
    public var isReply: Bool
    /// A reply's status: 0 for success, else a `LogicalDeviceError.Kind` raw value; 0 in requests.
    public var status: UInt8
    /// The requester's tag, echoed in the reply so it can match replies to requests.
    public var tag: UInt32
    /// The first 512-byte block.
    public var firstBlock: UInt64
    /// How many blocks; at most ``maximumData`` / 512.
    public var blockCount: UInt16
    /// A write's data, or a successful read reply's; empty otherwise.
    public var data: [UInt8]

    /// A message; a request by default (`isReply` false, status 0).
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
