import ModelessSystem

/// Just enough IPv4 for a NIC driver to be seen working: answers ARP requests and ICMP echo
/// requests for its address, and sends echo requests of its own and waits for the replies.
public final class EchoResponder: @unchecked Sendable {
    public let mac: [UInt8]
    public let ip: [UInt8]
    private let send: @Sendable ([UInt8]) throws -> Void
    private let state = ConditionLock()
    private var neighbours: [[UInt8]: [UInt8]] = [:]
    private var replies: Set<UInt16> = []
    private(set) public var answeredEchoes = 0
    private(set) public var answeredARP = 0

    public init(mac: [UInt8], ip: [UInt8], send: @escaping @Sendable ([UInt8]) throws -> Void) {
        self.mac = mac
        self.ip = ip
        self.send = send
    }

    /// Parses a dotted IPv4 address.
    public static func address(_ text: String) -> [UInt8]? {
        let parts = text.split(separator: ".").compactMap { UInt8($0) }
        return parts.count == 4 && text.split(separator: ".").count == 4 ? parts : nil
    }

    /// Handles one received frame.
    public func handle(_ frame: [UInt8]) {
        guard frame.count >= 14 else { return }
        let type = UInt16(frame[12]) << 8 | UInt16(frame[13])
        if type == 0x0806, frame.count >= 42 { handleARP(frame) }
        if type == 0x0800, frame.count >= 34 { handleIPv4(frame) }
    }

    private func handleARP(_ frame: [UInt8]) {
        let operation = UInt16(frame[20]) << 8 | UInt16(frame[21])
        let senderMAC = Array(frame[22..<28]), senderIP = Array(frame[28..<32]), targetIP = Array(frame[38..<42])
        state.withLock {
            neighbours[senderIP] = senderMAC
            state.broadcast()
        }
        guard operation == 1, targetIP == ip else { return }
        var reply = senderMAC + mac + [0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x02]
        reply += mac + ip + senderMAC + senderIP
        try? send(reply)
        state.withLock { answeredARP += 1 }
    }

    private func handleIPv4(_ frame: [UInt8]) {
        let headerLength = Int(frame[14] & 0x0F) * 4
        let totalLength = Int(frame[16]) << 8 | Int(frame[17])
        guard frame[23] == 1, Array(frame[30..<34]) == ip, headerLength >= 20,
              frame.count >= 14 + totalLength, totalLength >= headerLength + 8 else { return }
        let icmp = 14 + headerLength
        let identifier = UInt16(frame[icmp + 4]) << 8 | UInt16(frame[icmp + 5])
        if frame[icmp] == 0, identifier == Self.identifier {  // An echo reply to us.
            state.withLock {
                replies.insert(UInt16(frame[icmp + 6]) << 8 | UInt16(frame[icmp + 7]))
                state.broadcast()
            }
            return
        }
        guard frame[icmp] == 8 else { return }  // Echo request: answer it.
        var reply = Array(frame[0..<14 + totalLength])
        reply.replaceSubrange(0..<6, with: frame[6..<12])
        reply.replaceSubrange(6..<12, with: mac)
        reply.replaceSubrange(26..<30, with: ip)
        reply.replaceSubrange(30..<34, with: frame[26..<30])
        reply[icmp] = 0
        Self.setChecksum(&reply, at: icmp + 2, over: icmp..<14 + totalLength)
        Self.setChecksum(&reply, at: 24, over: 14..<14 + headerLength)
        try? send(reply)
        state.withLock { answeredEchoes += 1 }
    }

    static let identifier: UInt16 = 0x4D4C  // "ML"

    /// Resolves `target` by ARP, then sends `count` echo requests, one a second at most, and
    /// returns how many were answered.
    public func ping(_ target: [UInt8], count: Int, timeoutSeconds: Double = 2) throws -> Int {
        var peer: [UInt8]?
        for _ in 0..<5 where peer == nil {
            let request = [UInt8](repeating: 0xFF, count: 6) + mac + [0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]
                + mac + ip + [UInt8](repeating: 0, count: 6) + target
            try send(request)
            peer = wait(timeoutSeconds) { neighbours[target] }
        }
        guard let peer else { return 0 }
        var answered = 0
        for sequence in 1...UInt16(count) {
            var packet = peer + mac + [0x08, 0x00]
            let payload = Array("modeless echo".utf8)
            let length = 20 + 8 + payload.count
            packet += [0x45, 0, UInt8(length >> 8), UInt8(length & 0xFF), 0, 0, 0x40, 0, 64, 1, 0, 0] + ip + target
            packet += [8, 0, 0, 0, UInt8(Self.identifier >> 8), UInt8(Self.identifier & 0xFF), UInt8(sequence >> 8), UInt8(sequence & 0xFF)] + payload
            Self.setChecksum(&packet, at: 24, over: 14..<34)
            Self.setChecksum(&packet, at: 36, over: 34..<packet.count)
            try send(packet)
            if wait(timeoutSeconds, { replies.contains(sequence) ? true : nil }) != nil { answered += 1 }
        }
        return answered
    }

    private func wait<T>(_ seconds: Double, _ found: () -> T?) -> T? {
        let deadline = monotonicNanoseconds() + UInt64(seconds * 1e9)
        return state.withLock {
            while true {
                if let value = found() { return value }
                let now = monotonicNanoseconds()
                guard now < deadline else { return nil }
                _ = state.wait(nanoseconds: deadline - now)
            }
        }
    }

    /// The Internet checksum of `range`, stored big-endian at `offset` (zeroed first).
    static func setChecksum(_ bytes: inout [UInt8], at offset: Int, over range: Range<Int>) {
        bytes[offset] = 0
        bytes[offset + 1] = 0
        var sum: UInt32 = 0
        var index = range.lowerBound
        while index + 1 < range.upperBound {
            sum += UInt32(bytes[index]) << 8 | UInt32(bytes[index + 1])
            index += 2
        }
        if index < range.upperBound { sum += UInt32(bytes[index]) << 8 }
        while sum >> 16 != 0 { sum = (sum & 0xFFFF) + (sum >> 16) }
        let checksum = ~UInt16(sum)
        bytes[offset] = UInt8(checksum >> 8)
        bytes[offset + 1] = UInt8(checksum & 0xFF)
    }
}
