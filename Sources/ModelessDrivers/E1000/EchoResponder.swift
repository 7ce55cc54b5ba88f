import ModelessRuntime

/// Just enough IPv4 for a NIC driver to be seen working: answers ARP requests and ICMP echo
/// requests for its address, and sends echo requests of its own and waits for the replies.
///
/// It answers only whole, valid echo requests: an IPv4 packet that is not a fragment, whose
/// header and ICMP checksums are correct and whose lengths agree with each other and with the
/// frame. Any other ICMP packet for its address that is not a whole, valid message is dropped
/// and counted in ``droppedPackets``.
///
/// ``handle(_:)`` runs where the driver delivers frames (its receive DPC, with interrupts
/// disabled): it shares its state through a `SpinLock` and never waits. ``ping(_:count:timeoutSeconds:)``
/// waits, at passive level only.
public final class EchoResponder: @unchecked Sendable {
    /// The Ethernet address it answers ARP with and sends from, 6 bytes.
    public let mac: [UInt8]
    /// The IPv4 address it answers for, 4 bytes in network order.
    public let ip: [UInt8]
    private let send: @Sendable ([UInt8]) throws -> Void
    private let runtime: any DriverRuntime
    private let state: SpinLock<State>
    /// Signalled when an ARP answer or an echo reply arrives.
    private let arrived: WaitEvent

    private struct State {
        var neighbours: [[UInt8]: [UInt8]] = [:]
        var replies: Set<UInt16> = []
        var answeredEchoes = 0, answeredARP = 0, dropped = 0, failedSends = 0
    }

    /// A responder on `ip` with `mac`, sending through `send` (the driver's transmit).
    public init(mac: [UInt8], ip: [UInt8], runtime: any DriverRuntime, send: @escaping @Sendable ([UInt8]) throws -> Void) {
        precondition(mac.count == 6 && ip.count == 4, "a MAC address has 6 bytes and an IPv4 address 4")
        self.mac = mac
        self.ip = ip
        self.runtime = runtime
        self.send = send
        state = runtime.makeSpinLock("echo responder", State())
        arrived = runtime.makeWaitEvent("echo responder arrivals")
    }

    /// Parses a dotted IPv4 address.
    public static func address(_ text: String) -> [UInt8]? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        let bytes = parts.compactMap { UInt8($0) }
        return parts.count == 4 && bytes.count == 4 ? bytes : nil
    }

    /// Echo requests answered.
    public var answeredEchoes: Int { state.withLock { $0.answeredEchoes } }
    /// ARP requests answered.
    public var answeredARP: Int { state.withLock { $0.answeredARP } }
    /// ICMP packets for this address dropped because they were not whole, valid messages:
    /// fragments, bad IPv4 header or ICMP checksums, truncated or inconsistent lengths.
    public var droppedPackets: Int { state.withLock { $0.dropped } }
    /// Answers that could not be sent (the transmit ring was full, or the NIC failed).
    public var failedSends: Int { state.withLock { $0.failedSends } }

    /// Handles one received frame. Never waits.
    public func handle(_ frame: [UInt8]) {
        guard frame.count >= EthernetHeader.size else { return }
        switch bigEndian16(frame, EthernetHeader.etherType) {
        case EthernetHeader.typeARP: handleARP(frame)
        case EthernetHeader.typeIPv4: handleIPv4(frame)
        default: break
        }
    }

    private func handleARP(_ frame: [UInt8]) {
        let arp = EthernetHeader.size
        guard frame.count >= arp + ARPPacket.size,
              bigEndian16(frame, arp + ARPPacket.hardwareType) == ARPPacket.ethernet,
              bigEndian16(frame, arp + ARPPacket.protocolType) == EthernetHeader.typeIPv4 else { return }
        let field = { (range: Range<Int>) in Array(frame[(arp + range.lowerBound)..<(arp + range.upperBound)]) }
        let senderMAC = field(ARPPacket.senderMAC), senderIP = field(ARPPacket.senderIP)
        state.withLock { $0.neighbours[senderIP] = senderMAC }
        arrived.signal()
        guard bigEndian16(frame, arp + ARPPacket.operation) == ARPPacket.request, field(ARPPacket.targetIP) == ip else { return }
        let reply = senderMAC + mac + [UInt8(EthernetHeader.typeARP >> 8), UInt8(EthernetHeader.typeARP & 0xFF)]
            + ARPPacket.packet(ARPPacket.reply, senderMAC: mac, senderIP: ip, targetMAC: senderMAC, targetIP: senderIP)
        if transmit(reply) { state.withLock { $0.answeredARP += 1 } }
    }

    private func handleIPv4(_ frame: [UInt8]) {
        guard let peeked = IPv4Packet.peek(frame), peeked.destination.elementsEqual(ip),
              peeked.protocol == IPv4Packet.protocolICMP else { return }
        let packet: IPv4Packet
        do { packet = try IPv4Packet(frame: frame) } catch { return drop() }
        let icmp = packet.payload
        guard icmp.count >= ICMPHeader.size, InternetChecksum.isValid(frame, over: icmp) else { return drop() }
        let type = frame[icmp.lowerBound + ICMPHeader.type], code = frame[icmp.lowerBound + ICMPHeader.code]
        switch type {
        case ICMPHeader.echoReply where bigEndian16(frame, icmp.lowerBound + ICMPHeader.identifier) == Self.identifier:
            let sequence = bigEndian16(frame, icmp.lowerBound + ICMPHeader.sequence)
            state.withLock { _ = $0.replies.insert(sequence) }
            arrived.signal()
        case ICMPHeader.echoRequest:
            guard code == 0 else { return drop() }
            answer(frame, packet)
        default:
            break
        }
    }

    /// Sends the echo reply to a valid echo request: the same identifier, sequence and data.
    private func answer(_ frame: [UInt8], _ packet: IPv4Packet) {
        var icmp = Array(frame[packet.payload])
        icmp[ICMPHeader.type] = ICMPHeader.echoReply
        InternetChecksum.set(&icmp, at: ICMPHeader.checksum, over: 0..<icmp.count)
        let reply = IPv4Packet.frame(from: mac, to: Array(frame[EthernetHeader.source]), source: ip, destination: Array(packet.source),
                                     protocol: IPv4Packet.protocolICMP, payload: icmp)
        if transmit(reply) { state.withLock { $0.answeredEchoes += 1 } }
    }

    private func drop() { state.withLock { $0.dropped += 1 } }

    /// Sends `frame`, counting a failure instead of throwing it (a frame handler cannot wait
    /// or report to anyone).
    private func transmit(_ frame: [UInt8]) -> Bool {
        do {
            try send(frame)
            return true
        } catch {
            state.withLock { $0.failedSends += 1 }
            return false
        }
    }

    /// The identifier of this responder's own echo requests ("ML").
    static let identifier: UInt16 = 0x4D4C

    /// Resolves `target` by ARP, then sends `count` echo requests, each after the previous
    /// one's reply or timeout, and returns how many were answered. Waits: passive level only.
    public func ping(_ target: [UInt8], count: Int, timeoutSeconds: Double = 2) throws -> Int {
        precondition(target.count == 4, "an IPv4 address has 4 bytes")
        try runtime.mightSleep("pinging \(target)")
        let timeout = Duration.milliseconds(Int64(timeoutSeconds * 1000))
        var peer: [UInt8]?
        for _ in 0..<5 where peer == nil {
            let request = EthernetHeader.broadcast + mac + [UInt8(EthernetHeader.typeARP >> 8), UInt8(EthernetHeader.typeARP & 0xFF)]
                + ARPPacket.packet(ARPPacket.request, senderMAC: mac, senderIP: ip, targetMAC: [0, 0, 0, 0, 0, 0], targetIP: target)
            try send(request)
            _ = arrived.wait(timeout: timeout) {
                peer = state.withLock { $0.neighbours[target] }
                return peer != nil
            }
        }
        guard let peer, count > 0 else { return 0 }
        var answered = 0
        for sequence in 1...UInt16(clamping: count) {
            var icmp = [UInt8](repeating: 0, count: ICMPHeader.size) + Array("modeless echo".utf8)
            icmp[ICMPHeader.type] = ICMPHeader.echoRequest
            setBigEndian16(&icmp, ICMPHeader.identifier, Self.identifier)
            setBigEndian16(&icmp, ICMPHeader.sequence, sequence)
            InternetChecksum.set(&icmp, at: ICMPHeader.checksum, over: 0..<icmp.count)
            try send(IPv4Packet.frame(from: mac, to: peer, source: ip, destination: target, protocol: IPv4Packet.protocolICMP, payload: icmp))
            if arrived.wait(timeout: timeout, until: { state.withLock { $0.replies.contains(sequence) } }) { answered += 1 }
        }
        return answered
    }
}
