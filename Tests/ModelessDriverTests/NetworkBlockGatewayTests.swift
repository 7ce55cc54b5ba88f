import ModelessDrivers
import ModelessLogical
import ModelessRuntime
import ModelessSystem
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Frames the gateway sent.
final class SentFrames: @unchecked Sendable {
    private let frames = Mutex<[[UInt8]]>([])
    func add(_ frame: [UInt8]) { frames.withLock { $0.append(frame) } }

    /// Waits (up to 5 s) for frame number `index`.
    func frame(_ index: Int) -> [UInt8]? {
        let deadline = ContinuousClock.now + .seconds(5)
        while ContinuousClock.now < deadline {
            if let frame = frames.withLock({ index < $0.count ? $0[index] : nil }) { return frame }
            usleep(1000)
        }
        return nil
    }
}

@Suite("Network block gateway")
struct NetworkBlockGatewayTests {
    let clientMAC: [UInt8] = [0x02, 0, 0, 0, 0, 1]
    let gatewayMAC: [UInt8] = [0x02, 0, 0, 0, 0, 2]
    let clientIP: [UInt8] = [10, 0, 0, 1]
    let gatewayIP: [UInt8] = [10, 0, 0, 2]

    func request(_ message: BlockGatewayMessage, port: UInt16 = 7470) -> [UInt8] {
        UDPDatagram(sourceMAC: clientMAC, destinationMAC: gatewayMAC, sourceIP: clientIP, destinationIP: gatewayIP,
                    sourcePort: 40000, destinationPort: port, payload: message.bytes).frame
    }

    @Test func aDatagramSurvivesBuildingAndParsingWithValidChecksums() throws {
        let datagram = UDPDatagram(sourceMAC: clientMAC, destinationMAC: gatewayMAC, sourceIP: clientIP, destinationIP: gatewayIP,
                                   sourcePort: 1234, destinationPort: 7470, payload: Array("hello".utf8))
        let frame = datagram.frame
        #expect(UDPDatagram(frame: frame) == datagram)
        // A correct Internet checksum sums (with its field) to 0xFFFF.
        func sum(_ bytes: [UInt8]) -> UInt32 {
            var total: UInt32 = 0
            for index in stride(from: 0, to: bytes.count, by: 2) {
                total += UInt32(bytes[index]) << 8 | (index + 1 < bytes.count ? UInt32(bytes[index + 1]) : 0)
            }
            while total >> 16 != 0 { total = (total & 0xFFFF) + (total >> 16) }
            return total
        }
        #expect(sum(Array(frame[14..<34])) == 0xFFFF, "IPv4 header checksum")
        let udpLength = frame.count - 34
        #expect(sum(clientIP + gatewayIP + [0, 17, UInt8(udpLength >> 8), UInt8(udpLength & 0xFF)] + Array(frame[34...])) == 0xFFFF,
                "UDP checksum")
        var truncated = frame
        truncated.removeLast(3)
        #expect(UDPDatagram(frame: truncated) == nil, "a frame shorter than its IPv4 length is refused")
    }

    @Test(arguments: ExecutionMode.allCases)
    func requestsOverTheNetworkReachTheDiskBelowAndAnswersComeBack(_ mode: ExecutionMode) throws {
        try withVerifiedRuntime(mode) { runtime in try exchangeRequests(runtime) }
    }

    func exchangeRequests(_ runtime: any DriverRuntime) throws {
        let directory = ContainerDirectory(path: "/tmp/mlg-\(getpid())-\(runtime.mode)")
        let container = try LogicalContainer(name: "gw", directory: directory, serving: false)
        defer { container.shutdown() }
        let disk = MemoryDiskProvider(blockCount: 64)
        try container.createDevice("disk", handlers: disk.handlers)
        let sent = SentFrames()
        let gateway = try NetworkBlockGateway(container: container, lower: "disk", ip: gatewayIP, runtime: runtime) { sent.add($0) }
        try container.createDevice("net0", handlers: gateway.handlers)
        defer { gateway.stop() }

        let data = (0..<1024).map { UInt8(truncatingIfNeeded: $0 * 7) }
        #expect(gateway.handle(request(BlockGatewayMessage(operation: .write, tag: 1, firstBlock: 10, blockCount: 2, data: data))))
        let writeReply = try #require(sent.frame(0).flatMap(UDPDatagram.init(frame:)))
        #expect(writeReply.destinationIP == clientIP && writeReply.destinationPort == 40000 && writeReply.destinationMAC == clientMAC)
        let written = try #require(BlockGatewayMessage(writeReply.payload))
        #expect(written.isReply && written.status == 0 && written.tag == 1)

        #expect(gateway.handle(request(BlockGatewayMessage(operation: .read, tag: 2, firstBlock: 10, blockCount: 2))))
        let read = try #require(sent.frame(1).flatMap(UDPDatagram.init(frame:)).flatMap { BlockGatewayMessage($0.payload) })
        #expect(read.tag == 2 && read.status == 0 && read.data == data)

        // Out of range: the disk refuses, the gateway answers with the failure, nothing crashes.
        #expect(gateway.handle(request(BlockGatewayMessage(operation: .read, tag: 3, firstBlock: 63, blockCount: 2))))
        let refused = try #require(sent.frame(2).flatMap(UDPDatagram.init(frame:)).flatMap { BlockGatewayMessage($0.payload) })
        #expect(refused.tag == 3 && refused.status == UInt8(LogicalDeviceError.Kind.requestFailed.rawValue))
        // A write whose data does not match its count is refused before it reaches the disk.
        #expect(gateway.handle(request(BlockGatewayMessage(operation: .write, tag: 4, firstBlock: 0, blockCount: 2, data: [1, 2, 3]))))
        let mismatched = try #require(sent.frame(3).flatMap(UDPDatagram.init(frame:)).flatMap { BlockGatewayMessage($0.payload) })
        #expect(mismatched.tag == 4 && mismatched.status != 0)

        // Not for the gateway: another port, or not a gateway message.
        #expect(!gateway.handle(request(BlockGatewayMessage(operation: .read, tag: 5, firstBlock: 0, blockCount: 1), port: 9)))
        #expect(gateway.handle(UDPDatagram(sourceMAC: clientMAC, destinationMAC: gatewayMAC, sourceIP: clientIP, destinationIP: gatewayIP,
                                           sourcePort: 1, destinationPort: 7470, payload: [1, 2, 3]).frame))
        #expect(gateway.statistics.malformed == 1)
        #expect(gateway.statistics.requests == 4)
    }
}
