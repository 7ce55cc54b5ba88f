import ModelessDrivers
import ModelessRuntime
import Synchronization
import Testing

/// The echo responder answers whole, valid ICMP echo requests only; everything else for its
/// address is counted as dropped and not answered.
@Suite("The e1000 echo responder")
struct E1000EchoResponderTests {
    static let ours: [UInt8] = [169, 254, 77, 2], ourMAC: [UInt8] = [2, 0, 0, 0, 0, 2]
    static let peer: [UInt8] = [169, 254, 77, 1], peerMAC: [UInt8] = [2, 0, 0, 0, 0, 1]

    /// What can be wrong with an echo request.
    enum Damage: String, CaseIterable, Sendable {
        case firstFragment = "a first fragment (More Fragments set)"
        case laterFragment = "a later fragment (offset 185)"
        case badHeaderChecksum = "a bad IPv4 header checksum"
        case badICMPChecksum = "a bad ICMP checksum"
        case truncated = "a frame shorter than its IPv4 total length"
        case shortICMP = "a total length too short for an ICMP header"
        case headerLongerThanTotal = "a header length beyond the total length"
    }

    /// An echo request from the peer, built by the test (independently of the driver's code),
    /// with `damage` done to it after the checksums were set, or before where the damage is a
    /// valid header saying the wrong thing (so that only the named flaw is wrong).
    static func request(_ damage: Damage? = nil, to destination: [UInt8] = ours) -> [UInt8] {
        let data: [UInt8] = Array("0123456789abcdef".utf8)
        var icmp: [UInt8] = [8, 0, 0, 0, 0x12, 0x34, 0, 7] + data
        InternetChecksum.set(&icmp, at: 2, over: 0..<icmp.count)
        if damage == .badICMPChecksum { icmp[2] ^= 0x01 }
        var total = 20 + icmp.count
        if damage == .shortICMP { total = 20 + 4 }
        var flags: UInt16 = 0x4000
        if damage == .firstFragment { flags = 0x2000 }
        if damage == .laterFragment { flags = 185 }
        let headerWords: UInt8 = damage == .headerLongerThanTotal ? 15 : 5
        var header: [UInt8] = [0x40 | headerWords, 0, UInt8(total >> 8), UInt8(total & 0xFF), 0, 1, UInt8(flags >> 8), UInt8(flags & 0xFF),
                               64, 1, 0, 0] + peer + destination
        if damage == .headerLongerThanTotal { header += [UInt8](repeating: 1, count: 40) }  // options, 60 bytes in all
        InternetChecksum.set(&header, at: 10, over: 0..<header.count)
        if damage == .badHeaderChecksum { header[10] ^= 0x80 }
        var frame = ourMAC + peerMAC + [0x08, 0x00] + header + icmp
        if damage == .truncated { frame.removeLast(5) }
        return frame
    }

    final class Sent: @unchecked Sendable {
        let frames = Mutex<[[UInt8]]>([])
    }

    func withResponder(_ body: (EchoResponder, Sent) throws -> Void) throws {
        try withVerifiedRuntime(.kernelEmulation) { runtime in
            let sent = Sent()
            let responder = EchoResponder(mac: Self.ourMAC, ip: Self.ours, runtime: runtime) { frame in
                sent.frames.withLock { $0.append(frame) }
            }
            try body(responder, sent)
        }
    }

    @Test func aWholeValidRequestIsAnsweredWithValidChecksums() throws {
        try withResponder { responder, sent in
            responder.handle(Self.request())
            let frames = sent.frames.withLock { $0 }
            try #require(frames.count == 1)
            let reply = frames[0]
            #expect(Array(reply[0..<6]) == Self.peerMAC && Array(reply[6..<12]) == Self.ourMAC)
            #expect(Array(reply[26..<30]) == Self.ours && Array(reply[30..<34]) == Self.peer)
            #expect(reply[34] == 0 && reply[35] == 0, "an echo reply, code 0")
            #expect(Array(reply[38...]) == Array(Self.request()[38...]), "identifier, sequence and data echoed")
            #expect(InternetChecksum.verify(reply, over: 14..<34) && InternetChecksum.verify(reply, over: 34..<reply.count))
            #expect(responder.answeredEchoes == 1 && responder.droppedPackets == 0)
        }
    }

    @Test(arguments: Damage.allCases)
    func aDamagedRequestIsDroppedAndCounted(_ damage: Damage) throws {
        try withResponder { responder, sent in
            responder.handle(Self.request(damage))
            #expect(sent.frames.withLock { $0.isEmpty }, "no reply to \(damage.rawValue)")
            #expect(responder.droppedPackets == 1, "\(damage.rawValue) counted as dropped")
            #expect(responder.answeredEchoes == 0)
            responder.handle(Self.request())
            #expect(responder.answeredEchoes == 1, "a valid request after it is still answered")
        }
    }

    @Test func packetsForAnotherAddressAreNeitherAnsweredNorCounted() throws {
        try withResponder { responder, sent in
            responder.handle(Self.request(to: [169, 254, 77, 9]))
            responder.handle(Self.request(.badICMPChecksum, to: [169, 254, 77, 9]))
            responder.handle(Array(Self.request().prefix(30)))  // Too short to say where it goes.
            #expect(sent.frames.withLock { $0.isEmpty })
            #expect(responder.droppedPackets == 0 && responder.answeredEchoes == 0)
        }
    }

    @Test func addressesParseOnlyWhenDottedQuads() {
        #expect(EchoResponder.address("169.254.77.2") == [169, 254, 77, 2])
        for bad in ["169.254.77", "169.254.77.2.1", "169.254..2", "169.254.77.256", "a.b.c.d", ""] {
            #expect(EchoResponder.address(bad) == nil, "\(bad)")
        }
    }
}
