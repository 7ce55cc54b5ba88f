/// The messages containers exchange over their sockets, and their validation.
///
/// Every message is one `SOCK_SEQPACKET` packet: a 32-byte header, then a payload of at most
/// ``maximumPayload`` bytes. Every field of a received message is checked before use; a
/// message that fails a check is answered with ``LogicalDeviceError/Kind/malformedMessage``
/// and nothing else happens.
struct WireMessage {
    enum Kind: UInt8 {
        case open = 1, openReply, close, closeReply, request, reply, attach, attachReply, list, listReply, share, shareReply
    }

    static let magic: UInt32 = 0x4D4C_444D  // "MLDM"
    static let version: UInt8 = 1
    static let headerSize = 32
    static let maximumPayload = ParameterChain.maximumBytes + 4
    static let maximumSize = headerSize + maximumPayload

    var kind: Kind
    /// 0, or the ``LogicalDeviceError/Kind`` of a failed call (the payload is then its message).
    var status: UInt16 = 0
    var requestID: UInt64 = 0
    var consumerID: UInt64 = 0
    var payloadLength: Int = 0

    /// Writes the header into the first 32 bytes of `buffer`.
    func writeHeader(into buffer: UnsafeMutableRawBufferPointer) {
        buffer.storeBytes(of: Self.magic.littleEndian, toByteOffset: 0, as: UInt32.self)
        buffer.storeBytes(of: Self.version, toByteOffset: 4, as: UInt8.self)
        buffer.storeBytes(of: kind.rawValue, toByteOffset: 5, as: UInt8.self)
        buffer.storeBytes(of: status.littleEndian, toByteOffset: 6, as: UInt16.self)
        buffer.storeBytes(of: requestID.littleEndian, toByteOffset: 8, as: UInt64.self)
        buffer.storeBytes(of: consumerID.littleEndian, toByteOffset: 16, as: UInt64.self)
        buffer.storeBytes(of: UInt32(payloadLength).littleEndian, toByteOffset: 24, as: UInt32.self)
        buffer.storeBytes(of: UInt32(0), toByteOffset: 28, as: UInt32.self)
    }

    /// Parses and checks the header of a received message of `length` bytes.
    static func parse(_ buffer: UnsafeRawBufferPointer, length: Int) throws(LogicalDeviceError) -> WireMessage {
        guard length >= headerSize else { throw malformed("a \(length)-byte message is shorter than the \(headerSize)-byte header") }
        guard UInt32(littleEndian: buffer.loadUnaligned(fromByteOffset: 0, as: UInt32.self)) == magic else {
            throw malformed("the message does not start with the protocol's magic number")
        }
        let version = buffer.load(fromByteOffset: 4, as: UInt8.self)
        guard version == Self.version else { throw malformed("protocol version \(version) is not \(Self.version)") }
        let rawKind = buffer.load(fromByteOffset: 5, as: UInt8.self)
        guard let kind = Kind(rawValue: rawKind) else { throw malformed("unknown message kind \(rawKind)") }
        let status = UInt16(littleEndian: buffer.loadUnaligned(fromByteOffset: 6, as: UInt16.self))
        guard status == 0 || LogicalDeviceError.Kind(rawValue: status) != nil else { throw malformed("unknown status \(status)") }
        let payloadLength = Int(UInt32(littleEndian: buffer.loadUnaligned(fromByteOffset: 24, as: UInt32.self)))
        guard payloadLength == length - headerSize else {
            throw malformed("the header says \(payloadLength) payload bytes but \(length - headerSize) arrived")
        }
        return WireMessage(
            kind: kind, status: status,
            requestID: UInt64(littleEndian: buffer.loadUnaligned(fromByteOffset: 8, as: UInt64.self)),
            consumerID: UInt64(littleEndian: buffer.loadUnaligned(fromByteOffset: 16, as: UInt64.self)),
            payloadLength: payloadLength)
    }

    static func malformed(_ why: String) -> LogicalDeviceError { LogicalDeviceError(.malformedMessage, "malformed message: \(why)") }
}

/// A reusable buffer for building and receiving messages on one socket.
final class MessageBuffer: @unchecked Sendable {
    let bytes: UnsafeMutableRawBufferPointer

    init() { bytes = .allocate(byteCount: WireMessage.maximumSize, alignment: 8) }
    deinit { bytes.deallocate() }

    var payload: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(rebasing: bytes[WireMessage.headerSize...]) }

    /// Builds a message whose payload is `text` (a name, or an error's message) and returns its length.
    func build(_ message: WireMessage, text: String) -> Int {
        let utf8 = Array(text.utf8.prefix(4096))
        var header = message
        header.payloadLength = utf8.count
        header.writeHeader(into: bytes)
        UnsafeMutableRawBufferPointer(rebasing: payload[0..<utf8.count]).copyBytes(from: utf8)
        return WireMessage.headerSize + utf8.count
    }

    /// Builds an error reply for `error`.
    func buildError(_ kind: WireMessage.Kind, requestID: UInt64, consumerID: UInt64, _ error: LogicalDeviceError) -> Int {
        build(WireMessage(kind: kind, status: error.kind.rawValue, requestID: requestID, consumerID: consumerID), text: error.message)
    }

    /// The payload of a received message, as text.
    func text(_ message: WireMessage) -> String {
        String(decoding: UnsafeRawBufferPointer(rebasing: payload[0..<message.payloadLength]), as: UTF8.self)
    }

    /// The error a failed reply carries.
    func error(_ message: WireMessage) -> LogicalDeviceError? {
        guard message.status != 0, let kind = LogicalDeviceError.Kind(rawValue: message.status) else { return nil }
        return LogicalDeviceError(kind, text(message))
    }
}
