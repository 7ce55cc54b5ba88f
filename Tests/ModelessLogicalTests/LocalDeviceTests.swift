import ModelessLogical
import Testing

@Suite("Logical devices in one container")
struct LocalDeviceTests {
    func makeContainer() throws -> LogicalContainer {
        try LogicalContainer(name: "local", directory: temporaryContainerDirectory(), serving: false)
    }

    @Test func openSendClose() throws {
        let container = try makeContainer()
        let disk = MemoryDiskProvider(blockCount: 8)
        try container.createDevice("disk", handlers: disk.handlers)
        let handle = try container.open("disk")
        #expect(handle.name.description == "local/disk")
        #expect(disk.consumers == [handle.consumerID])

        let chain = try ParameterChain(blocks: 1, inputCapacity: 1024, outputCapacity: 1024)
        let write = try chain.claimBlock()
        try BlockRequest.prepareWrite(write, first: 2, data: Array(repeating: 7, count: 512), blockSize: 512)
        try container.send(handle, write)
        #expect(write.deviceName == "local/disk")

        let readChain = try ParameterChain(blocks: 1, inputCapacity: 64, outputCapacity: 1024)
        let read = try readChain.claimBlock()
        try BlockRequest.prepareRead(read, first: 2, count: 1)
        try container.send(handle, read)
        #expect(read.output.bytes == Array(repeating: 7, count: 512))

        try container.close(handle)
        #expect(disk.closes == [handle.consumerID])
        #expect(disk.consumers.isEmpty)
    }

    @Test func everyOpenGetsItsOwnConsumerID() throws {
        let container = try makeContainer()
        let disk = MemoryDiskProvider(blockCount: 1)
        try container.createDevice("disk", handlers: disk.handlers)
        let first = try container.open("disk")
        let second = try container.open("local/disk")
        #expect(first.consumerID != second.consumerID)
        #expect(container.consumers(of: "disk") == [first.consumerID, second.consumerID])
    }

    @Test func callErrorsAreErrorsNotCrashes() throws {
        let container = try makeContainer()
        try container.createDevice("disk", handlers: MemoryDiskProvider(blockCount: 1).handlers)

        #expect(throws: LogicalDeviceError.self) { try container.open("missing") }
        #expect((try? container.open("missing")) == nil)
        #expect(kind { try container.open("missing") } == .noSuchDevice)
        #expect(kind { try container.open("a/b/c") } == .invalidName)
        #expect(kind { try container.open("bad name") } == .invalidName)
        #expect(kind { try container.createDevice("disk", handlers: MemoryDiskProvider(blockCount: 1).handlers) } == .nameInUse)

        let handle = try container.open("disk")
        #expect(kind { try container.destroyDevice("disk") } == .deviceBusy)
        let chain = try ParameterChain(blocks: 1, inputCapacity: 64, outputCapacity: 64)
        let block = try chain.claimBlock()
        #expect(kind { try container.send(handle, block) } == .malformedMessage, "a block with no request type")
        try BlockRequest.prepareRead(block, first: 5, count: 1)
        #expect(kind { try container.send(handle, block) } == .requestFailed, "outside the disk")
        #expect(block.failure == .requestFailed)

        try container.close(handle)
        #expect(kind { try container.close(handle) } == .notOpen, "double close")
        try BlockRequest.prepareRead(block, first: 0, count: 1)
        #expect(kind { try container.send(handle, block) } == .notOpen, "send on a closed handle")
        try container.destroyDevice("disk")
        #expect(kind { try container.destroyDevice("disk") } == .noSuchDevice)
        #expect(kind { try container.open("disk") } == .noSuchDevice)
    }

    @Test func aHandleFromAnotherContainerIsRefused() throws {
        let one = try makeContainer()
        let other = try LogicalContainer(name: "other", directory: temporaryContainerDirectory(), serving: false)
        try one.createDevice("disk", handlers: MemoryDiskProvider(blockCount: 1).handlers)
        let handle = try one.open("disk")
        let block = try ParameterChain(blocks: 1, inputCapacity: 64, outputCapacity: 512).claimBlock()
        try BlockRequest.prepareRead(block, first: 0, count: 1)
        #expect(kind { try other.send(handle, block) } == .foreignHandle)
        #expect(kind { try other.close(handle) } == .foreignHandle)
        try one.send(handle, block)
    }

    @Test func anOpenHandlerCanRefuse() throws {
        let container = try makeContainer()
        struct Refusal: Error, CustomStringConvertible { var description: String { "only one consumer at a time" } }
        try container.createDevice("single", handlers: LogicalDeviceHandlers(open: { _ in throw Refusal() }, request: { _ in }))
        let error = #expect(throws: LogicalDeviceError.self) { try container.open("single") }
        #expect(error?.kind == .requestFailed)
        #expect(error?.message == "only one consumer at a time")
        try container.destroyDevice("single")  // a refused open leaves no consumer behind
    }

    @Test func asynchronousRequestsCompleteOnceWithTheirContext() throws {
        let container = try makeContainer()
        let disk = MemoryDiskProvider(blockCount: 64)
        try container.createDevice("disk", handlers: disk.handlers)
        let handle = try container.open("disk")
        let outcomes = Outcomes()
        var chains: [ParameterChain] = []
        for index in 0..<64 {
            let chain = try ParameterChain(blocks: 1, inputCapacity: 16 + 512, outputCapacity: 512)
            chains.append(chain)
            let block = try chain.claimBlock()
            try BlockRequest.prepareWrite(block, first: UInt64(index), data: Array(repeating: UInt8(index), count: 512), blockSize: 512)
            try container.send(handle, block, context: index) { result, context in
                outcomes.record(context, result.map { _ in () })
            }
        }
        #expect(eventually { outcomes.count == 64 })
        #expect(outcomes.all.keys.sorted() == Array(0..<64))
        #expect(outcomes.all.values.allSatisfy { $0.count == 1 && (try? $0[0].get()) != nil })
        try container.close(handle)
    }

    @Test func nonStandardPayloadsPassDirectlyWithinAContainer() throws {
        let container = try makeContainer()
        struct Question: Sendable { var words: [String] }
        try container.createDevice("upper", handlers: LogicalDeviceHandlers { context in
            guard let question = context.block.requestPayload as? Question else { throw LogicalDeviceError(.requestFailed, "no question") }
            context.block.replyPayload = question.words.map { $0.uppercased() }
        })
        let handle = try container.open("upper")
        let block = try ParameterChain(blocks: 1, inputCapacity: 0, outputCapacity: 0).claimBlock()
        block.requestType = .nonStandard
        block.code = 9
        block.requestPayload = Question(words: ["a", "b"])
        try container.send(handle, block)
        #expect(block.replyPayload as? [String] == ["A", "B"])
    }

    @Test func parameterAreasAreBoundsChecked() throws {
        let chain = try ParameterChain(blocks: 2, inputCapacity: 8, outputCapacity: 4)
        let block = try chain.claimBlock()
        try block.input.store(UInt64(1), at: 0)
        #expect(throws: LogicalDeviceError.self) { try block.input.store(UInt8(1), at: 8) }
        #expect(throws: LogicalDeviceError.self) { try block.output.write([1, 2, 3, 4, 5], at: 0) }
        #expect(throws: LogicalDeviceError.self) { try block.output.read(at: -1, count: 1) }
        #expect(throws: LogicalDeviceError.self) { try block.input.setLength(9) }
        #expect(chain[1].input.length == 0, "the next block is untouched")
        _ = try chain.claimBlock()
        #expect(kind { _ = try chain.claimBlock() } == .chainExhausted)
        #expect(kind { _ = try ParameterChain(blocks: 1, inputCapacity: ParameterChain.maximumBytes, outputCapacity: 1) } == .tooLarge)
    }
}

/// The kind of the `LogicalDeviceError` `body` throws, or nil if it does not throw one.
func kind(_ body: () throws -> Void) -> LogicalDeviceError.Kind? {
    do {
        try body()
        return nil
    } catch let error as LogicalDeviceError {
        return error.kind
    } catch {
        return nil
    }
}
