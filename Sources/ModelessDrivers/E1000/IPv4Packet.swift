/// The Ethernet II header: the layout shared by every frame the sample services read and build.
enum EthernetHeader {
    static let destination = 0..<6
    static let source = 6..<12
    /// EtherType, big-endian.
    static let etherType = 12
    static let size = 14
    static let typeIPv4: UInt16 = 0x0800
    static let typeARP: UInt16 = 0x0806
    static let broadcast = [UInt8](repeating: 0xFF, count: 6)
}

/// An IPv4 packet in an Ethernet frame, checked whole: version 4, a header of at least 20
/// bytes with a correct checksum, a total length that covers the header and fits the frame,
/// and not a fragment (neither More Fragments nor a fragment offset).
struct IPv4Packet {
    /// Offsets from the start of the IPv4 header (RFC 791).
    enum Field {
        static let versionAndHeaderLength = 0
        static let totalLength = 2
        static let identification = 4
        static let flagsAndFragmentOffset = 6
        static let timeToLive = 8
        static let `protocol` = 9
        static let headerChecksum = 10
        static let source = 12..<16
        static let destination = 16..<20
        static let minimumHeader = 20
    }

    static let version: UInt8 = 4
    static let dontFragment: UInt16 = 0x4000
    static let moreFragments: UInt16 = 0x2000
    static let fragmentOffsetMask: UInt16 = 0x1FFF
    static let protocolICMP: UInt8 = 1
    static let protocolUDP: UInt8 = 17
    static let defaultTimeToLive: UInt8 = 64

    /// Why a packet was refused.
    enum Invalid: Error, Equatable {
        case truncated, badVersion, badHeaderLength, badTotalLength, fragment, badHeaderChecksum
    }

    /// Where the IPv4 header starts in the frame (after the Ethernet header).
    static let start = EthernetHeader.size

    let headerLength: Int
    let totalLength: Int
    let `protocol`: UInt8
    let source: ArraySlice<UInt8>
    let destination: ArraySlice<UInt8>

    /// The packet in `frame`, or why it is not a whole, valid one.
    init(frame: [UInt8]) throws(Invalid) {
        let ip = Self.start
        guard frame.count >= ip + Field.minimumHeader else { throw .truncated }
        guard frame[ip + Field.versionAndHeaderLength] >> 4 == Self.version else { throw .badVersion }
        headerLength = Int(frame[ip + Field.versionAndHeaderLength] & 0x0F) * 4
        totalLength = Int(bigEndian16(frame, ip + Field.totalLength))
        guard headerLength >= Field.minimumHeader else { throw .badHeaderLength }
        guard totalLength >= headerLength else { throw .badTotalLength }
        guard frame.count >= ip + totalLength else { throw .truncated }
        let fragment = bigEndian16(frame, ip + Field.flagsAndFragmentOffset)
        guard fragment & (Self.moreFragments | Self.fragmentOffsetMask) == 0 else { throw .fragment }
        guard InternetChecksum.isValid(frame, over: ip..<ip + headerLength) else { throw .badHeaderChecksum }
        `protocol` = frame[ip + Field.protocol]
        source = frame[(ip + Field.source.lowerBound)..<(ip + Field.source.upperBound)]
        destination = frame[(ip + Field.destination.lowerBound)..<(ip + Field.destination.upperBound)]
    }

    /// The payload's range in the frame.
    var payload: Range<Int> { Self.start + headerLength..<Self.start + totalLength }

    /// The destination address and protocol of the IPv4 packet in `frame`, read without
    /// checking anything else; nil if the frame is too short to hold a header.
    static func peek(_ frame: [UInt8]) -> (destination: ArraySlice<UInt8>, protocol: UInt8)? {
        guard frame.count >= start + Field.minimumHeader else { return nil }
        return (frame[(start + Field.destination.lowerBound)..<(start + Field.destination.upperBound)], frame[start + Field.protocol])
    }

    /// An Ethernet frame carrying an IPv4 packet (20-byte header, Don't Fragment, header
    /// checksum set) of `payload`.
    static func frame(from sourceMAC: [UInt8], to destinationMAC: [UInt8], source: [UInt8], destination: [UInt8],
                      protocol: UInt8, payload: [UInt8]) -> [UInt8] {
        let total = Field.minimumHeader + payload.count
        var header = [UInt8](repeating: 0, count: Field.minimumHeader)
        header[Field.versionAndHeaderLength] = version << 4 | UInt8(Field.minimumHeader / 4)
        setBigEndian16(&header, Field.totalLength, UInt16(total))
        setBigEndian16(&header, Field.flagsAndFragmentOffset, dontFragment)
        header[Field.timeToLive] = defaultTimeToLive
        header[Field.protocol] = `protocol`
        header.replaceSubrange(Field.source, with: source)
        header.replaceSubrange(Field.destination, with: destination)
        InternetChecksum.set(&header, at: Field.headerChecksum, over: 0..<header.count)
        return destinationMAC + sourceMAC + [UInt8(typeIPv4 >> 8), UInt8(typeIPv4 & 0xFF)] + header + payload
    }

    private static let typeIPv4 = EthernetHeader.typeIPv4
}

/// ICMP (RFC 792) echo messages.
enum ICMPHeader {
    static let type = 0
    static let code = 1
    static let checksum = 2
    static let identifier = 4
    static let sequence = 6
    static let size = 8
    static let echoReply: UInt8 = 0
    static let echoRequest: UInt8 = 8
}

/// ARP (RFC 826) for IPv4 over Ethernet, from the start of the ARP packet.
enum ARPPacket {
    static let hardwareType = 0
    static let protocolType = 2
    static let hardwareLength = 4
    static let protocolLength = 5
    static let operation = 6
    static let senderMAC = 8..<14
    static let senderIP = 14..<18
    static let targetMAC = 18..<24
    static let targetIP = 24..<28
    static let size = 28
    static let ethernet: UInt16 = 1
    static let request: UInt16 = 1
    static let reply: UInt16 = 2

    /// An ARP packet: operation, sender and target.
    static func packet(_ operation: UInt16, senderMAC: [UInt8], senderIP: [UInt8], targetMAC: [UInt8], targetIP: [UInt8]) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: size)
        setBigEndian16(&bytes, hardwareType, ethernet)
        setBigEndian16(&bytes, protocolType, EthernetHeader.typeIPv4)
        bytes[hardwareLength] = 6
        bytes[protocolLength] = 4
        setBigEndian16(&bytes, self.operation, operation)
        bytes.replaceSubrange(self.senderMAC, with: senderMAC)
        bytes.replaceSubrange(self.senderIP, with: senderIP)
        bytes.replaceSubrange(self.targetMAC, with: targetMAC)
        bytes.replaceSubrange(self.targetIP, with: targetIP)
        return bytes
    }
}

/// The Internet checksum (RFC 1071): the ones' complement of the ones' complement sum of
/// 16-bit big-endian words.
enum InternetChecksum {
    /// The ones' complement sum of `range`, folded to 16 bits (an odd last byte is padded with zero).
    static func sum(_ bytes: [UInt8], over range: Range<Int>) -> UInt16 {
        var sum: UInt32 = 0
        var index = range.lowerBound
        while index + 1 < range.upperBound {
            sum += UInt32(bytes[index]) << 8 | UInt32(bytes[index + 1])
            index += 2
        }
        if index < range.upperBound { sum += UInt32(bytes[index]) << 8 }
        while sum >> 16 != 0 { sum = (sum & 0xFFFF) + (sum >> 16) }
        return UInt16(sum)
    }

    /// Whether `range`, checksum field included, sums to all-ones.
    static func isValid(_ bytes: [UInt8], over range: Range<Int>) -> Bool { sum(bytes, over: range) == 0xFFFF }

    /// Computes the checksum of `range` and stores it big-endian at `offset` (zeroed first).
    static func set(_ bytes: inout [UInt8], at offset: Int, over range: Range<Int>) {
        setBigEndian16(&bytes, offset, 0)
        setBigEndian16(&bytes, offset, ~sum(bytes, over: range))
    }
}

/// The big-endian 16-bit value at `offset`.
@inline(__always)
func bigEndian16(_ bytes: [UInt8], _ offset: Int) -> UInt16 { UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1]) }

/// Stores `value` big-endian at `offset`.
@inline(__always)
func setBigEndian16(_ bytes: inout [UInt8], _ offset: Int, _ value: UInt16) {
    bytes[offset] = UInt8(value >> 8)
    bytes[offset + 1] = UInt8(truncatingIfNeeded: value)
}
