import ModelessDevice
import ModelessDrivers
import ModelessModels
import ModelessRuntime
import ModelessSystem
import Synchronization
import Testing

/// The NVMe driver's asynchronous writes and its allocation-free tagged reads and writes,
/// against the NVMe model.
@Suite("The NVMe driver's asynchronous writes and tagged I/O")
struct NVMeTaggedIOTests {
    func withController(_ mode: ExecutionMode, _ completion: NVMeController.Completion, model: NVMeModel = NVMeModel(),
                        expectedReports: Int = 0,
                        _ body: (NVMeController, NVMeModel, DMAPool) throws -> Void) throws {
        try withVerifiedNVMe(mode, completion, model: model, timeout: .seconds(2), expectedReports: expectedReports) {
            controller, model, device in
            let pool = try DMAPool(device: device, chunkSize: 4096, count: controller.queueEntries)
            try body(controller, model, pool)
        }
    }

    static func pattern(_ index: Int) -> [UInt8] {
        (0..<4096).map { UInt8(truncatingIfNeeded: index &* 31 &+ $0 &* 3) }
    }

    /// Waits up to 10 s for `done`, polling the controller when it polls.
    func wait(_ controller: NVMeController, until done: () -> Bool) throws {
        for _ in 0..<10_000 where !done() {
            if controller.completion == .poll { try controller.pollCompletions() }
            usleep(1000)
        }
    }

    @Test(arguments: ExecutionMode.allCases, [NVMeController.Completion.msix, .intx, .poll])
    func asynchronousWritesLandAndReadBack(_ mode: ExecutionMode, _ completion: NVMeController.Completion) throws {
        try withController(mode, completion) { (controller, model, pool) throws in
            let written = Mutex<[Int: Int]>([:])
            for index in 0..<24 {
                let chunk = try #require(pool.allocate())
                try pool.write(Self.pattern(index), to: chunk)
                try controller.writeAsync(lba: UInt64(index * 8), blocks: 8, from: chunk, of: pool) { result in
                    if case .success = result { written.withLock { $0[index, default: 0] += 1 } }
                    pool.release(chunk)
                }
            }
            try wait(controller) { written.withLock { $0.count } == 24 }
            #expect(written.withLock { $0 } == Dictionary(uniqueKeysWithValues: (0..<24).map { ($0, 1) }), "each write completed once")
            for index in 0..<24 {
                #expect(model.contents(block: index * 8, count: 8) == Self.pattern(index))
                #expect(try controller.read(lba: UInt64(index * 8), blocks: 8) == Self.pattern(index))
            }
        }
    }

    @Test(arguments: ExecutionMode.allCases, [NVMeController.Completion.msix, .intx, .poll])
    func taggedReadsAndWritesEachCompleteOnceWithTheirTag(_ mode: ExecutionMode, _ completion: NVMeController.Completion) throws {
        try withController(mode, completion) { (controller, model, pool) throws in
            let outcomes = Mutex<[UInt64: Int]>([:])
            let failures = Atomic<Int>(0)
            let record: @Sendable (NVMeIOCompletion) -> Void = { entry in
                if !entry.succeeded { failures.add(1, ordering: .relaxed) }
                outcomes.withLock { $0[entry.tag, default: 0] += 1 }
            }
            controller.setCompletionHandler(record)
            let count = controller.queueEntries - 1  // A full queue.
            var chunks: [DMAPool.Chunk] = []
            for index in 0..<count {
                let chunk = try #require(pool.allocate())
                chunks.append(chunk)
                try pool.write(Self.pattern(index), to: chunk)
                try controller.submitWrite(lba: UInt64(index * 8), blocks: 8, from: chunk, of: pool, tag: 1000 + UInt64(index))
            }
            try wait(controller) { outcomes.withLock { $0.count } == count }
            #expect(outcomes.withLock { $0 } == Dictionary(uniqueKeysWithValues: (0..<count).map { (1000 + UInt64($0), 1) }))
            for index in 0..<count { #expect(model.contents(block: index * 8, count: 8) == Self.pattern(index)) }

            // Read them back in reverse order into cleared chunks; when polling, through the visitor.
            for chunk in chunks { try pool.write([UInt8](repeating: 0, count: 4096), to: chunk) }
            outcomes.withLock { $0.removeAll() }
            for index in (0..<count).reversed() {
                try controller.submitRead(lba: UInt64(index * 8), blocks: 8, into: chunks[index], of: pool, tag: UInt64(index))
            }
            if completion == .poll {
                for _ in 0..<10_000 where outcomes.withLock({ $0.count }) < count {
                    try controller.pollCompletions(record)
                    usleep(1000)
                }
            } else {
                try wait(controller) { outcomes.withLock { $0.count } == count }
            }
            #expect(outcomes.withLock { $0 } == Dictionary(uniqueKeysWithValues: (0..<count).map { (UInt64($0), 1) }))
            #expect(failures.load(ordering: .relaxed) == 0)
            for index in 0..<count { #expect(try pool.read(4096, from: chunks[index]) == Self.pattern(index)) }
        }
    }

    @Test func aFullQueueRefusesTheNextCommandAndFailuresCarryTheirStatus() throws {
        let model = NVMeModel()
        try withController(.user, .poll, model: model) { (controller, model, pool) throws in
            let outcomes = Mutex<[NVMeIOCompletion]>([])
            controller.setCompletionHandler { entry in outcomes.withLock { $0.append(entry) } }
            model.failNextIO = (0, 0x80)
            let chunk = try #require(pool.allocate())
            try controller.submitWrite(lba: 0, blocks: 8, from: chunk, of: pool, tag: 7)
            try wait(controller) { !outcomes.withLock { $0.isEmpty } }
            #expect(outcomes.withLock { $0 }.map { [$0.tag, UInt64($0.statusCode)] } == [[7, 0x80]])
            let failed = Mutex<NVMeController.Failure?>(nil)
            model.failNextIO = (0, 0x80)
            try controller.writeAsync(lba: 0, blocks: 8, from: chunk, of: pool) { result in
                if case .failure(let failure) = result { failed.withLock { $0 = failure } }
            }
            try wait(controller) { failed.withLock { $0 } != nil }
            #expect(failed.withLock { $0 } == .commandFailed("Write", statusType: 0, statusCode: 0x80))

            model.dropCommands = true
            for index in 0..<(controller.queueEntries - 1) {
                try controller.submitRead(lba: 0, blocks: 8, into: chunk, of: pool, tag: UInt64(index))
            }
            #expect(throws: NVMeController.Failure.self) {
                try controller.submitRead(lba: 0, blocks: 8, into: chunk, of: pool, tag: 99)
            }
            #expect(throws: NVMeController.Failure.self) {
                try controller.submitRead(lba: UInt64(model.blockCount), blocks: 1, into: chunk, of: pool, tag: 1)
            }
        }
    }
    /// A synchronous command from a completion handler would wait for an interrupt that its
    /// own thread services only afterwards: it is refused at once with an error that says what
    /// to use instead, the verifier reports the attempt (once: the refusal comes before the
    /// bounce buffer's passive lock), and the controller goes on working. Polling has no such wait.
    @Test(arguments: ExecutionMode.allCases, [NVMeController.Completion.msix, .intx])
    func aSynchronousCommandFromACompletionHandlerIsRefused(_ mode: ExecutionMode, _ completion: NVMeController.Completion) throws {
        try withController(mode, completion, expectedReports: 1) { controller, _, pool in
            let outcome = Mutex<String?>(nil)
            let chunk = try #require(pool.allocate())
            try controller.readAsync(lba: 0, blocks: 8, into: chunk, of: pool) { _ in
                let started = monotonicNanoseconds()
                do {
                    _ = try controller.read(lba: 0, blocks: 1)
                    outcome.withLock { $0 = "the read was not refused" }
                } catch {
                    let waited = monotonicNanoseconds() - started
                    let timedOut = waited >= controller.commandTimeout.wholeNanoseconds
                    outcome.withLock { $0 = timedOut ? "refused only after \(waited / 1_000_000) ms" : "\(error)" }
                }
            }
            try wait(controller) { outcome.withLock { $0 } != nil }
            let message = try #require(outcome.withLock { $0 })
            #expect(message.contains("from an ISR or DPC"), "\(message)")
            #expect(try controller.read(lba: 0, blocks: 1).count == controller.identity!.blockSize)
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
