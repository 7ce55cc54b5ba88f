/// An IPv4 UDP datagram in an Ethernet frame: parsed from a received frame, or built into one.
/// Only what a sample network service needs: no options, no fragments.
public struct UDPDatagram: Equatable, Sendable {
    public var sourceMAC: [UInt8]
    public var destinationMAC: [UInt8]
    public var sourceIP: [UInt8]
    public var destinationIP: [UInt8]
    public var sourcePort: UInt16
    public var destinationPort: UInt16
    public var payload: [UInt8]

    public init(sourceMAC: [UInt8], destinationMAC: [UInt8], sourceIP: [UInt8], destinationIP: [UInt8],
                sourcePort: UInt16, destinationPort: UInt16, payload: [UInt8]) {
        self.sourceMAC = sourceMAC
        self.destinationMAC = destinationMAC
        self.sourceIP = sourceIP
        self.destinationIP = destinationIP
        self.sourcePort = sourcePort
        self.destinationPort = destinationPort
        self.payload = payload
    }

    /// The datagram in `frame`, or nil if the frame is not an unfragmented IPv4 UDP datagram
    /// whose lengths agree.
    public init?(frame: [UInt8]) {
        guard frame.count >= 42, frame[12] == 0x08, frame[13] == 0x00, frame[14] >> 4 == 4, frame[23] == 17 else { return nil }
        let headerLength = Int(frame[14] & 0x0F) * 4
        let totalLength = Int(frame[16]) << 8 | Int(frame[17])
        let fragment = UInt16(frame[20] & 0x3F) << 8 | UInt16(frame[21])
        guard headerLength >= 20, fragment == 0, totalLength >= headerLength + 8, frame.count >= 14 + totalLength else { return nil }
        let udp = 14 + headerLength
        let udpLength = Int(frame[udp + 4]) << 8 | Int(frame[udp + 5])
        guard udpLength >= 8, udp + udpLength <= 14 + totalLength else { return nil }
        destinationMAC = Array(frame[0..<6])
        sourceMAC = Array(frame[6..<12])
        sourceIP = Array(frame[26..<30])
        destinationIP = Array(frame[30..<34])
        sourcePort = UInt16(frame[udp]) << 8 | UInt16(frame[udp + 1])
        destinationPort = UInt16(frame[udp + 2]) << 8 | UInt16(frame[udp + 3])
        payload = Array(frame[udp + 8..<udp + udpLength])
    }

    /// The largest payload that fits a 1514-byte frame.
    public static let maximumPayload = 1514 - 14 - 20 - 8

    /// The datagram as an Ethernet frame, with the IPv4 header checksum and the UDP checksum.
    public var frame: [UInt8] {
        precondition(payload.count <= Self.maximumPayload, "a UDP payload of \(payload.count) bytes does not fit a frame")
        let udpLength = 8 + payload.count
        let totalLength = 20 + udpLength
        var bytes = destinationMAC + sourceMAC + [0x08, 0x00]
        bytes += [0x45, 0, UInt8(totalLength >> 8), UInt8(totalLength & 0xFF), 0, 0, 0x40, 0, 64, 17, 0, 0] + sourceIP + destinationIP
        bytes += [UInt8(sourcePort >> 8), UInt8(sourcePort & 0xFF), UInt8(destinationPort >> 8), UInt8(destinationPort & 0xFF),
                  UInt8(udpLength >> 8), UInt8(udpLength & 0xFF), 0, 0] + payload
        EchoResponder.setChecksum(&bytes, at: 24, over: 14..<34)
        // The UDP checksum covers a pseudo-header (addresses, protocol, length) and the datagram.
        var covered = sourceIP + destinationIP + [0, 17, UInt8(udpLength >> 8), UInt8(udpLength & 0xFF)] + Array(bytes[34...])
        EchoResponder.setChecksum(&covered, at: 12 + 6, over: 0..<covered.count)
        if covered[18] == 0 && covered[19] == 0 { covered[18] = 0xFF; covered[19] = 0xFF }  // 0 means "no checksum"
        bytes[40] = covered[18]
        bytes[41] = covered[19]
        return bytes
    }

    /// The reply to this datagram: addresses and ports swapped.
    public func reply(_ payload: [UInt8]) -> UDPDatagram {
        UDPDatagram(sourceMAC: destinationMAC, destinationMAC: sourceMAC, sourceIP: destinationIP, destinationIP: sourceIP,
                    sourcePort: destinationPort, destinationPort: sourcePort, payload: payload)
    }
}
