import Synchronization
import ModelessDevice
import ModelessDrivers
import ModelessModels
import ModelessRuntime
import ModelessSystem
import Testing

/// The NVMe driver against the NVMe model, in both modes and every completion method.
@Suite("The NVMe driver against the NVMe model")
struct NVMeDriverTests {
    func withController(_ mode: ExecutionMode = .user, _ completion: NVMeController.Completion = .msix,
                        model: NVMeModel = NVMeModel(), timeout: Duration = .seconds(5),
                        _ body: (NVMeController, NVMeModel, ModeledDevice) throws -> Void) throws {
        try withVerifiedNVMe(mode, completion, model: model, timeout: timeout, body)
    }

    @Test(arguments: ExecutionMode.allCases, [NVMeController.Completion.msix, .intx, .poll])
    func identifiesWritesAndReadsBack(_ mode: ExecutionMode, _ completion: NVMeController.Completion) throws {
        try withController(mode, completion) { (controller, model, _) throws in
            let identity = try #require(controller.identity)
            #expect(identity.serialNumber == "model-nvme0")
            #expect(identity.modelNumber == "Modeless NVMe Model")
            #expect(identity.firmwareRevision == "1.0")
            #expect(identity.blockSize == 512 && identity.blockCount == 8192)
            #expect(identity.maximumTransfer == 128 * 1024)
            for blocks in [1, 8, 16, 256] {  // PRP1 only, PRP1+PRP2, PRP2 page, PRP list
                let data = (0..<blocks * 512).map { UInt8(truncatingIfNeeded: $0 * 7 + blocks) }
                try controller.write(lba: UInt64(blocks), data)
                #expect(model.contents(block: blocks, count: blocks) == data)
                #expect(try controller.read(lba: UInt64(blocks), blocks: blocks) == data)
            }
            try controller.flush()
            #expect(model.ioCommands[0x00] == 1 && model.ioCommands[0x01] == 4 && model.ioCommands[0x02] == 4)
            if completion != .poll { #expect(controller.isrCalls >= 9) }
        }
    }

    @Test func aFailedCommandReportsItsStatus() throws {
        try withController { (controller, model, _) throws in
            model.failNextIO = (type: 0, code: 0x81)
            #expect(throws: NVMeController.Failure.commandFailed("Read", statusType: 0, statusCode: 0x81)) {
                _ = try controller.read(lba: 0, blocks: 1)
            }
            #expect(try controller.read(lba: 0, blocks: 1).count == 512, "the next command works")
        }
    }

    @Test func aLostCommandTimesOut() throws {
        try withController(timeout: .milliseconds(300)) { (controller, model, _) throws in
            model.dropCommands = true
            #expect(throws: NVMeController.Failure.timedOut("Read")) { _ = try controller.read(lba: 0, blocks: 1) }
        }
    }

    @Test(arguments: [NVMeController.Completion.msix, .poll])
    func aFatalControllerIsReported(_ completion: NVMeController.Completion) throws {
        try withController(.user, completion, timeout: .seconds(2)) { (controller, model, _) throws in
            model.enterFatalStatus()
            #expect(throws: NVMeController.Failure.controllerFatal) { _ = try controller.read(lba: 0, blocks: 1) }
        }
    }

    /// A controller that stops answering mid-run is reported once, as lost (not as a timeout),
    /// and every later request fails with that at once.
    @Test(arguments: ExecutionMode.allCases, [NVMeController.Completion.msix, .poll])
    func aRemovedControllerIsReportedOnceAndLaterRequestsFailAtOnce(_ mode: ExecutionMode,
                                                                  _ completion: NVMeController.Completion) throws {
        try withController(mode, completion, timeout: .seconds(5)) { (controller, _, device) throws in
            device.faults.surpriseRemoved = true
            let started = monotonicNanoseconds()
            #expect(throws: NVMeController.Failure.deviceLost("CSTS reads all-ones")) { _ = try controller.read(lba: 0, blocks: 1) }
            #expect(monotonicNanoseconds() - started < controller.commandTimeout.wholeNanoseconds, "found lost, not timed out")
            #expect(controller.failure == .deviceLost("CSTS reads all-ones"))
            let accesses = device.registerAccesses(during: {
                #expect(throws: NVMeController.Failure.deviceLost("CSTS reads all-ones")) { try controller.write(lba: 0, [UInt8](repeating: 0, count: 512)) }
                #expect(throws: NVMeController.Failure.deviceLost("CSTS reads all-ones")) { try controller.flush() }
            }, counted: { [runtime = controller.runtime] in runtime.currentContext == .passive })
            #expect(accesses == 0, "later requests fail at once, without touching the controller")
        }
    }

    @Test func badRequestsNeverReachTheDevice() throws {
        try withController { (controller, model, _) throws in
            #expect(throws: NVMeController.Failure.self) { _ = try controller.read(lba: 8191, blocks: 2) }
            #expect(throws: NVMeController.Failure.self) { _ = try controller.read(lba: 0, blocks: 0) }
            #expect(throws: NVMeController.Failure.self) { try controller.write(lba: 0, [1, 2, 3]) }
            #expect(throws: NVMeController.Failure.self) { _ = try controller.read(lba: 0, blocks: 257) }
            #expect(model.ioCommands.isEmpty)
        }
    }
}

@Suite("The NVMe driver's asynchronous reads")
struct NVMeAsyncTests {
    @Test(arguments: ExecutionMode.allCases, [NVMeController.Completion.msix, .intx, .poll])
    func manyReadsInFlightEachCompleteOnceWithTheirData(_ mode: ExecutionMode, _ completion: NVMeController.Completion) throws {
        try withVerifiedNVMe(mode, completion) { controller, _, device in
            for block in stride(from: 0, to: 256, by: 8) {
                try controller.write(lba: UInt64(block), [UInt8](repeating: UInt8(block / 8), count: 4096))
            }
            let pool = try DMAPool(device: device, chunkSize: 4096, count: 32)
            let done = Mutex<[Int: Int]>([:])
            var chunks: [Int: DMAPool.Chunk] = [:]
            for index in 0..<32 {
                let chunk = try #require(pool.allocate())
                chunks[index] = chunk
                try controller.readAsync(lba: UInt64(index * 8), blocks: 8, into: chunk, of: pool) { result in
                    if case .success = result { done.withLock { $0[index, default: 0] += 1 } }
                }
            }
            // Up to 10 s: the model completes commands on its own thread, at whatever pace a loaded machine allows.
            for _ in 0..<10_000 where done.withLock({ $0.count }) < 32 {
                if completion == .poll { try controller.pollCompletions() }
                usleep(1000)
            }
            #expect(done.withLock { $0 } == Dictionary(uniqueKeysWithValues: (0..<32).map { ($0, 1) }))
            for index in 0..<32 {
                #expect(try pool.read(4096, from: chunks[index]!) == [UInt8](repeating: UInt8(index), count: 4096))
            }
            #expect(throws: NVMeController.Failure.self) {
                try controller.readAsync(lba: 0, blocks: 17, into: chunks[0]!, of: pool) { _ in }
            }
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
