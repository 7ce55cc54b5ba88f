import ModelessLogical
import ModelessSystem
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Logical devices between containers")
struct CrossContainerTests {
    static let noSpin = RequestTransport(sharedMemory: true, spin: .zero)

    /// Every pairing of transports: shared memory when both sides take it (spinning or going
    /// straight to the doorbell), the socket when either side keeps to it.
    @Test(arguments: [
        (RequestTransport.standard, RequestTransport.standard, true),
        (noSpin, noSpin, true),
        (RequestTransport.socket, RequestTransport.standard, false),
        (RequestTransport.standard, RequestTransport.socket, false),
    ])
    func openSendCloseBetweenContainers(consumerTransport: RequestTransport, providerTransport: RequestTransport, shared: Bool) throws {
        let directory = temporaryContainerDirectory()
        let provider = try LogicalContainer(name: "storage", directory: directory, transport: providerTransport)
        let consumer = try LogicalContainer(name: "service", directory: directory, transport: consumerTransport)
        let disk = MemoryDiskProvider(blockCount: 16)
        try provider.createDevice("blk0", handlers: disk.handlers)

        let handle = try consumer.open("storage/blk0")
        #expect(disk.consumers == [handle.consumerID])
        #expect(consumer.sharesMemory(handle) == shared)
        let chain = try ParameterChain(blocks: 1, inputCapacity: 16 + 1024, outputCapacity: 1024)
        let write = try chain.claimBlock()
        try BlockRequest.prepareWrite(write, first: 3, data: (0..<1024).map { UInt8($0 % 251) }, blockSize: 512)
        try consumer.send(handle, write)

        let read = try ParameterChain(blocks: 1, inputCapacity: 16, outputCapacity: 1024).claimBlock()
        try BlockRequest.prepareRead(read, first: 3, count: 2)
        try consumer.send(handle, read)
        #expect(read.output.bytes == (0..<1024).map { UInt8($0 % 251) })

        let geometry = try ParameterChain(blocks: 1, inputCapacity: 0, outputCapacity: 16).claimBlock()
        try BlockRequest.prepareGeometry(geometry)
        try consumer.send(handle, geometry)
        #expect(try BlockRequest.geometry(of: geometry) == (16, 512))

        // A provider-side failure arrives as the same error.
        try BlockRequest.prepareRead(read, first: 99, count: 1)
        let error = #expect(throws: LogicalDeviceError.self) { try consumer.send(handle, read) }
        #expect(error?.kind == .requestFailed)
        #expect(error?.message.contains("outside the device's 16 blocks") == true)

        let listing = ContainerRegistry(directory: directory).runningContainers()
        #expect(listing.map(\.name) == ["service", "storage"])
        #expect(listing.last?.devices == [ContainerListing.Device(name: "blk0", consumers: 1)])

        try consumer.close(handle)
        #expect(disk.closes == [handle.consumerID])
        #expect(kind { try consumer.close(handle) } == .notOpen)
        #expect(kind { _ = try consumer.open("storage/missing") } == .noSuchDevice)
        #expect(kind { _ = try consumer.open("nobody/blk0") } == .noSuchContainer)
        consumer.shutdown()
        provider.shutdown()
        #expect(ContainerRegistry(directory: directory).runningContainers().isEmpty)
    }

    /// `modeless serve --transport` sets what a provider process accepts: a consumer offering
    /// shared memory gets it from a default provider and the socket from a `socket` one, and
    /// requests work both ways.
    @Test(arguments: [([String](), true), (["--transport", "socket"], false), (["--spin-microseconds", "0"], true)])
    func aServingProcessUsesTheTransportItWasGiven(_ options: [String], _ shared: Bool) throws {
        let directory = temporaryContainerDirectory()
        let server = try ChildProcess(
            try modelessPath(), ["serve", "memory-disk", "--container", "carrier", "--blocks", "8"] + options,
            environment: ["MODELESS_CONTAINER_DIR": directory.path])
        defer {
            server.signal(SIGTERM)
            _ = try? server.wait()
        }
        #expect(server.readLine()?.hasPrefix("serving carrier/blk0") == true)
        let consumer = try LogicalContainer(name: "client", directory: directory, serving: false)
        defer { consumer.shutdown() }
        let handle = try consumer.open("carrier/blk0")
        #expect(consumer.sharesMemory(handle) == shared)
        let write = try ParameterChain(blocks: 1, inputCapacity: 16 + 512, outputCapacity: 0).claimBlock()
        try BlockRequest.prepareWrite(write, first: 2, data: Array(repeating: 0xA5, count: 512), blockSize: 512)
        try consumer.send(handle, write)
        let read = try ParameterChain(blocks: 1, inputCapacity: 16, outputCapacity: 512).claimBlock()
        try BlockRequest.prepareRead(read, first: 2, count: 1)
        try consumer.send(handle, read)
        #expect(read.output.bytes == Array(repeating: 0xA5, count: 512))
        try consumer.close(handle)
    }

    @Test func aSecondContainerOfTheSameNameIsRefused() throws {
        let directory = temporaryContainerDirectory()
        let first = try LogicalContainer(name: "same", directory: directory)
        #expect(kind { _ = try LogicalContainer(name: "same", directory: directory) } == .nameInUse)
        first.shutdown()
        try LogicalContainer(name: "same", directory: directory).shutdown()  // the name is free again
        #expect(kind { _ = try LogicalContainer(name: "kernel", directory: directory) } == .invalidName)
        let kernel = try LogicalContainer.kernelEmulation(directory: directory)
        #expect(kernel.placement == .kernelEmulation)
        kernel.shutdown()
    }

    @Test func asynchronousRequestsCompleteExactlyOnce() throws {
        let directory = temporaryContainerDirectory()
        let provider = try LogicalContainer(name: "p", directory: directory)
        let consumer = try LogicalContainer(name: "c", directory: directory)
        try provider.createDevice("disk", handlers: MemoryDiskProvider(blockCount: 256).handlers)
        let handle = try consumer.open("p/disk")
        let outcomes = Outcomes()
        var chains: [ParameterChain] = []
        for index in 0..<256 {
            let chain = try ParameterChain(blocks: 1, inputCapacity: 16 + 512, outputCapacity: 512)
            chains.append(chain)
            let block = try chain.claimBlock()
            try BlockRequest.prepareWrite(block, first: UInt64(index), data: Array(repeating: UInt8(index & 0xFF), count: 512), blockSize: 512)
            try consumer.send(handle, block, context: index) { result, context in outcomes.record(context, result.map { _ in () }) }
        }
        // A synchronous request on the same handle meanwhile.
        let read = try ParameterChain(blocks: 1, inputCapacity: 16, outputCapacity: 512).claimBlock()
        try BlockRequest.prepareRead(read, first: 0, count: 1)
        try consumer.send(handle, read)
        try consumer.close(handle)  // waits for the ones in flight
        #expect(outcomes.count == 256)
        #expect(outcomes.all.values.allSatisfy { $0.count == 1 && (try? $0[0].get()) != nil })
    }

    @Test func aProviderThatEndsFailsEveryRequestOnce() throws {
        let directory = temporaryContainerDirectory()
        let provider = try LogicalContainer(name: "slow", directory: directory)
        let consumer = try LogicalContainer(name: "c", directory: directory)
        try provider.createDevice("disk", handlers: MemoryDiskProvider(blockCount: 64, delayNanoseconds: 20_000_000).handlers)
        let handle = try consumer.open("slow/disk")
        let outcomes = Outcomes()
        var chains: [ParameterChain] = []
        for index in 0..<32 {
            let chain = try ParameterChain(blocks: 1, inputCapacity: 16, outputCapacity: 512)
            chains.append(chain)
            let block = try chain.claimBlock()
            try BlockRequest.prepareRead(block, first: UInt64(index), count: 1)
            try consumer.send(handle, block, context: index) { result, context in outcomes.record(context, result.map { _ in () }) }
        }
        usleep(50_000)
        provider.shutdown()
        #expect(eventually { outcomes.count == 32 })
        let results = outcomes.all
        #expect(results.values.allSatisfy { $0.count == 1 })
        let failed = results.values.filter { if case .failure(let error) = $0[0] { error.kind == .providerTerminated } else { false } }
        #expect(failed.count > 0 && failed.count < 32, "some finished before the end, the rest failed: \(failed.count)")
        let read = try ParameterChain(blocks: 1, inputCapacity: 16, outputCapacity: 512).claimBlock()
        try BlockRequest.prepareRead(read, first: 0, count: 1)
        #expect(kind { try consumer.send(handle, read) } == .providerTerminated)
        #expect(kind { try consumer.send(handle, read) } == .providerTerminated, "and again, without hanging")
        try consumer.close(handle)
        consumer.shutdown()
    }

    @Test func nonStandardRequestsNeedAMarshallerToCrossContainers() throws {
        let directory = temporaryContainerDirectory()
        let provider = try LogicalContainer(name: "words", directory: directory)
        let consumer = try LogicalContainer(name: "c", directory: directory)
        try provider.createDevice("upper", handlers: LogicalDeviceHandlers { context in
            guard let words = context.block.requestPayload as? Words else { throw LogicalDeviceError(.requestFailed, "no words") }
            context.block.replyPayload = Words(list: words.list.map { $0.uppercased() })
        })
        let handle = try consumer.open("words/upper")
        let block = try ParameterChain(blocks: 1, inputCapacity: 256, outputCapacity: 256).claimBlock()
        block.requestType = .nonStandard
        block.code = 7
        block.requestPayload = Words(list: ["stack", "of", "devices"])
        #expect(kind { try consumer.send(handle, block) } == .notMarshallable)

        consumer.register(WordsMarshaller(), forCode: 7)
        #expect(kind { try consumer.send(handle, block) } == .requestFailed, "the provider cannot unmarshal either")
        provider.register(WordsMarshaller(), forCode: 7)
        try consumer.send(handle, block)
        #expect((block.replyPayload as? Words)?.list == ["STACK", "OF", "DEVICES"])
        consumer.shutdown()
        provider.shutdown()
    }
}

struct Words: Sendable { var list: [String] }

/// Words as NUL-separated UTF-8.
struct WordsMarshaller: RequestMarshaller {
    func marshalRequest(_ payload: any Sendable, into input: ParameterArea) throws { try encode(payload, input) }
    func unmarshalRequest(from input: ParameterArea) throws -> any Sendable { decode(input) }
    func marshalReply(_ payload: any Sendable, into output: ParameterArea) throws { try encode(payload, output) }
    func unmarshalReply(from output: ParameterArea) throws -> any Sendable { decode(output) }

    private func encode(_ payload: any Sendable, _ area: ParameterArea) throws {
        guard let words = payload as? Words else { throw LogicalDeviceError(.requestFailed, "not words") }
        try area.setBytes(Array(words.list.joined(separator: "\0").utf8))
    }

    private func decode(_ area: ParameterArea) -> Words {
        Words(list: area.bytes.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) })
    }
}
