/// An IPv4 UDP datagram in an Ethernet frame: parsed from a received frame, or built into one.
/// Only what a sample network service needs: no options, no fragments.
public struct UDPDatagram: Equatable, Sendable {
    /// The sender's Ethernet address, 6 bytes.
    public var sourceMAC: [UInt8]
    /// The receiver's Ethernet address, 6 bytes.
    public var destinationMAC: [UInt8]
    /// The sender's IPv4 address, 4 bytes in network order.
    public var sourceIP: [UInt8]
    /// The receiver's IPv4 address, 4 bytes in network order.
    public var destinationIP: [UInt8]
    /// The sender's UDP port.
    public var sourcePort: UInt16
    /// The receiver's UDP port.
    public var destinationPort: UInt16
    /// The UDP payload, without headers.
    public var payload: [UInt8]

    /// The UDP header (RFC 768), from its start.
    enum Header {
        static let sourcePort = 0
        static let destinationPort = 2
        static let length = 4
        static let checksum = 6
        static let size = 8
    }

    /// A datagram to build into a frame with its addresses, ports and payload.
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

    /// The datagram in `frame`, or nil if the frame is not a whole, valid IPv4 packet (see
    /// `IPv4Packet`) carrying a UDP datagram whose length fits the packet.
    public init?(frame: [UInt8]) {
        guard frame.count >= EthernetHeader.size, bigEndian16(frame, EthernetHeader.etherType) == EthernetHeader.typeIPv4 else { return nil }
        let packet: IPv4Packet
        do { packet = try IPv4Packet(frame: frame) } catch { return nil }
        let udp = packet.payload.lowerBound
        guard packet.protocol == IPv4Packet.protocolUDP, packet.payload.count >= Header.size else { return nil }
        let udpLength = Int(bigEndian16(frame, udp + Header.length))
        guard udpLength >= Header.size, udp + udpLength <= packet.payload.upperBound else { return nil }
        destinationMAC = Array(frame[EthernetHeader.destination])
        sourceMAC = Array(frame[EthernetHeader.source])
        sourceIP = Array(packet.source)
        destinationIP = Array(packet.destination)
        sourcePort = bigEndian16(frame, udp + Header.sourcePort)
        destinationPort = bigEndian16(frame, udp + Header.destinationPort)
        payload = Array(frame[udp + Header.size..<udp + udpLength])
    }

    /// The largest payload that fits a 1514-byte frame.
    public static let maximumPayload = 1514 - EthernetHeader.size - IPv4Packet.Field.minimumHeader - Header.size

    /// The datagram as an Ethernet frame, with the IPv4 header checksum and the UDP checksum.
    public var frame: [UInt8] {
        precondition(payload.count <= Self.maximumPayload, "a UDP payload of \(payload.count) bytes does not fit a frame")
        let udpLength = Header.size + payload.count
        var udp = [UInt8](repeating: 0, count: Header.size) + payload
        setBigEndian16(&udp, Header.sourcePort, sourcePort)
        setBigEndian16(&udp, Header.destinationPort, destinationPort)
        setBigEndian16(&udp, Header.length, UInt16(udpLength))
        // The UDP checksum covers a pseudo-header (addresses, zero, protocol, length) and the datagram.
        let pseudoHeader = sourceIP + destinationIP + [0, IPv4Packet.protocolUDP, UInt8(udpLength >> 8), UInt8(udpLength & 0xFF)]
        var covered = pseudoHeader + udp
        InternetChecksum.set(&covered, at: pseudoHeader.count + Header.checksum, over: 0..<covered.count)
        var checksum = bigEndian16(covered, pseudoHeader.count + Header.checksum)
        if checksum == 0 { checksum = 0xFFFF }  // 0 means "no checksum"
        setBigEndian16(&udp, Header.checksum, checksum)
        return IPv4Packet.frame(from: sourceMAC, to: destinationMAC, source: sourceIP, destination: destinationIP,
                                protocol: IPv4Packet.protocolUDP, payload: udp)
    }

    /// The reply to this datagram: addresses and ports swapped.
    public func reply(_ payload: [UInt8]) -> UDPDatagram {
        UDPDatagram(sourceMAC: destinationMAC, destinationMAC: sourceMAC, sourceIP: destinationIP, destinationIP: sourceIP,
                    sourcePort: destinationPort, destinationPort: sourcePort, payload: payload)
    }
}
