@testable import ModelessLogical
import ModelessSystem
import Testing

/// Malformed messages get an error answer and never crash or wedge a provider.
@Suite("Malformed messages")
struct MessageFuzzTests {
    /// A small deterministic generator, so that a failure can be replayed.
    struct SplitMix: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    /// Valid messages to mutate: an open, requests of each type, a close, a listing.
    static func seeds(consumer: UInt64) throws -> [[UInt8]] {
        let buffer = MessageBuffer()
        func bytes(_ length: Int) -> [UInt8] { Array(UnsafeRawBufferPointer(rebasing: buffer.bytes[0..<length])) }
        var seeds = [bytes(buffer.build(WireMessage(kind: .open), text: "disk"))]
        for blocks in [1, 3] {
            let chain = try ParameterChain(blocks: blocks, inputCapacity: 16 + 512, outputCapacity: 512)
            let block = try chain.claimBlock()
            try BlockRequest.prepareWrite(block, first: 1, data: Array(repeating: 9, count: 512), blockSize: 512)
            seeds.append(bytes(try RemoteHandle.encodeRequest(block, marshaller: nil, requestID: 1, consumerID: ConsumerID(rawValue: consumer), into: buffer)))
            try BlockRequest.prepareRead(block, first: 1, count: 1)
            seeds.append(bytes(try RemoteHandle.encodeRequest(block, marshaller: nil, requestID: 2, consumerID: ConsumerID(rawValue: consumer), into: buffer)))
        }
        seeds.append(bytes(buffer.build(WireMessage(kind: .list), text: "")))
        seeds.append(bytes(buffer.build(WireMessage(kind: .attach, consumerID: consumer), text: "")))
        return seeds
    }

    static func mutate(_ message: [UInt8], _ random: inout SplitMix) -> [UInt8] {
        var bytes = message
        switch random.next() % 5 {
        case 0:  // flip bytes, mostly in the headers
            for _ in 0..<(1 + Int(random.next() % 4)) where !bytes.isEmpty {
                let limit = min(bytes.count, random.next() % 2 == 0 ? 32 + 4 + 136 : bytes.count)
                bytes[Int(random.next() % UInt64(limit))] = UInt8(truncatingIfNeeded: random.next())
            }
        case 1:  // cut short
            bytes = Array(bytes.prefix(Int(random.next() % UInt64(bytes.count + 1))))
        case 2:  // extend with junk
            bytes += (0..<Int(random.next() % 64)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
        case 3:  // an extreme value in a 32-bit field
            if bytes.count >= 8 {
                let offset = Int(random.next() % UInt64(bytes.count - 3)) & ~3
                let value: UInt32 = [0, 1, 0x7FFF_FFFF, 0xFFFF_FFFF, 0x8000_0000][Int(random.next() % 5)]
                withUnsafeBytes(of: value.littleEndian) { for i in 0..<4 { bytes[offset + i] = $0[i] } }
            }
        default:  // pure junk
            bytes = (0..<Int(random.next() % 300)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
        }
        return bytes
    }

    /// On the socket, and through a shared-memory channel (where the provider copies each
    /// message out of the mailbox and validates it the same way).
    @Test(arguments: [false, true])
    func aProviderSurvivesTenThousandMalformedMessages(throughSharedMemory: Bool) throws {
        let directory = temporaryContainerDirectory()
        let provider = try LogicalContainer(name: "target", directory: directory)
        defer { provider.shutdown() }
        let disk = MemoryDiskProvider(blockCount: 4)
        try provider.createDevice("disk", handlers: disk.handlers)

        var random = SplitMix(state: 0x5EED)
        let answer = MessageBuffer()
        var answered = 0
        var connections = 0
        var socket = try UnixSocket.connect(to: directory.socketPath("target"))
        var link: any MessageLink = socket
        var currentSeeds: [[UInt8]] = []
        for round in 0..<10_000 {
            if round % 500 == 0 {
                // A fresh connection that opened the device, so that requests reach the decoder.
                socket.close()
                socket = try UnixSocket.connect(to: directory.socketPath("target"))
                let open = MessageBuffer()
                let length = open.build(WireMessage(kind: .open), text: "disk")
                let reply = try RemoteHandle.exchange(socket, open, length: length, expecting: .openReply, what: "open")
                connections += 1
                link = throughSharedMemory ? try Self.share(socket, consumer: reply.consumerID) : socket
                let seeds = try Self.seeds(consumer: reply.consumerID)
                random.state &+= UInt64(seeds.count)
                currentSeeds = seeds
            }
            let message = Self.mutate(currentSeeds[Int(random.next() % UInt64(currentSeeds.count))], &random)
            guard !message.isEmpty else { continue }
            try message.withUnsafeBytes { try link.send($0) }
            let length = try link.receive(into: answer.bytes)
            #expect(length >= WireMessage.headerSize, "round \(round): every message gets an answer")
            answered += 1
        }
        socket.close()
        #expect(answered > 9_000)

        // Still serving, correctly: a write lands whole and reads back. (A mutated write can be
        // well formed, with other data or another block, so what the fuzzing left is not checked.)
        let consumer = try LogicalContainer(name: "check", directory: directory)
        defer { consumer.shutdown() }
        let handle = try consumer.open("target/disk")
        let chain = try ParameterChain(blocks: 2, inputCapacity: 16 + 512, outputCapacity: 512)
        let write = try chain.claimBlock()
        let pattern = (0..<512).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 1) }
        try BlockRequest.prepareWrite(write, first: 2, data: pattern, blockSize: 512)
        try consumer.send(handle, write)
        let read = try chain.claimBlock()
        try BlockRequest.prepareRead(read, first: 2, count: 1)
        try consumer.send(handle, read)
        #expect(Array(read.output.bytes) == pattern)
        try consumer.close(handle)
        #expect(eventually { disk.consumers.isEmpty }, "every fuzzing connection's open was closed when it ended")
        #expect(disk.closes.count == connections + 1)
    }

    /// Moves an opened connection into a shared channel, as a consumer does after its open.
    static func share(_ socket: UnixSocket, consumer: UInt64) throws -> SharedMessageChannel {
        let (channel, attachment) = try SharedMessageChannel.create(capacity: WireMessage.maximumSize, socket: socket, spinNanoseconds: 0)
        defer { attachment.close() }
        let buffer = MessageBuffer()
        let length = buffer.build(WireMessage(kind: .share, consumerID: consumer), text: "")
        try socket.send(UnsafeRawBufferPointer(rebasing: buffer.bytes[0..<length]), attaching: attachment.descriptors)
        _ = try RemoteHandle.receiveReply(socket, buffer, expecting: .shareReply, what: "share")
        return channel
    }

    @Test func theChainDecoderRejectsEveryMalformedChain() throws {
        var random = SplitMix(state: 42)
        let chain = try ParameterChain(blocks: 3, inputCapacity: 40, outputCapacity: 24)
        _ = try chain.claimBlock().requestType = .read
        let buffer = MessageBuffer()
        let length = try ChainCodec.encode(chain, from: 0, into: buffer.payload)
        let valid = Array(UnsafeRawBufferPointer(rebasing: buffer.payload[0..<length]))
        var accepted = 0
        for _ in 0..<50_000 {
            let bytes = Self.mutate(valid, &random)
            if let decoded = try? bytes.withUnsafeBytes({ try ChainCodec.decode($0) }) {
                accepted += 1
                // Whatever it accepts is within bounds: every block's areas can be read in full.
                for index in 0..<decoded.count {
                    _ = decoded[index].input.bytes
                    _ = decoded[index].output.bytes
                    _ = decoded[index].deviceName
                }
            }
        }
        #expect(accepted > 0 && accepted < 50_000)
    }
}

#if canImport(Glibc)
import Glibc
#endif
