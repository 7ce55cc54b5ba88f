#if canImport(Glibc)
import Glibc
#endif
import ModelessDevice
import ModelessDrivers
import ModelessModels
import ModelessRuntime
import ModelessSystem
import Synchronization
import Testing

/// The NVMe driver's I/O queues: one per CPU with MSI-X (as many as the controller grants),
/// each as large as CAP.MQES allows, on its own vector or sharing one, and submissions batched
/// into one doorbell write.
@Suite("The NVMe driver's I/O queues")
struct NVMeQueueTests {
    /// Submits `perQueue` tagged reads to each I/O queue and waits until all completed; returns their tags.
    static func readOnEveryQueue(_ controller: NVMeController, _ device: ModeledDevice, perQueue: Int,
                                 completion: NVMeController.Completion) throws -> [UInt64] {
        let queues = controller.ioQueueCount
        let pool = try DMAPool(device: device, chunkSize: 4096, count: queues * perQueue)
        let tags = Mutex<[UInt64]>([])
        controller.setCompletionHandler { entry in
            if entry.succeeded { tags.withLock { $0.append(entry.tag) } }
        }
        for queue in 0..<queues {
            for index in 0..<perQueue {
                let tag = queue * perQueue + index
                try controller.submitRead(lba: UInt64(tag * 8), blocks: 8, into: pool.chunk(tag), of: pool,
                                          tag: UInt64(tag), queue: queue)
            }
        }
        for _ in 0..<10_000 where tags.withLock({ $0.count }) < queues * perQueue {
            if completion == .poll { try controller.pollCompletions() }
            usleep(1000)
        }
        return tags.withLock { $0.sorted() }
    }

    @Test(arguments: ExecutionMode.allCases)
    func msixGivesAQueuePerCPUAsLargeAsMQESAllows(_ mode: ExecutionMode) throws {
        try withVerifiedNVMe(mode, .msix) { (controller, model, device) throws in
            // The model's CAP.MQES is 255 and it grants up to 4 queues.
            #expect(controller.queueEntries == 256)
            #expect(controller.ioQueueCount == min(SystemThread.cpuCount, 4))
            let tags = try Self.readOnEveryQueue(controller, device, perQueue: 8, completion: .msix)
            #expect(tags == (0..<UInt64(controller.ioQueueCount * 8)).map { $0 })
            let expected = Dictionary(uniqueKeysWithValues: (1...controller.ioQueueCount).map { ($0, 8) })
            #expect(model.commandsPerQueue == expected, "each queue ran its own reads")
            // Synchronous I/O still works from any CPU's queue.
            try controller.write(lba: 100, [UInt8](repeating: 0x6B, count: 4096))
            #expect(try controller.read(lba: 100, blocks: 8) == [UInt8](repeating: 0x6B, count: 4096))
        }
    }

    /// A controller that offers one MSI-X vector: the admin queue and every I/O queue share it.
    @Test(arguments: ExecutionMode.allCases)
    func oneVectorIsSharedByEveryQueue(_ mode: ExecutionMode) throws {
        let model = NVMeModel(namespaces: [.init(identifier: 1, blocks: 4096)], msixVectors: 1)
        try withVerifiedNVMe(mode, .msix, model: model) { (controller, _, device) throws in
            let tags = try Self.readOnEveryQueue(controller, device, perQueue: 4, completion: .msix)
            #expect(tags == (0..<UInt64(controller.ioQueueCount * 4)).map { $0 })
        }
    }

    @Test(arguments: [NVMeController.Completion.intx, .poll])
    func otherCompletionMethodsUseOneQueue(_ completion: NVMeController.Completion) throws {
        try withVerifiedNVMe(.user, completion) { (controller, _, device) throws in
            #expect(controller.ioQueueCount == 1)
            #expect(try Self.readOnEveryQueue(controller, device, perQueue: 16, completion: completion) == (0..<16).map { $0 })
        }
    }

    /// An I/O queue limit of one gives MSI-X one I/O queue on one vector, whatever the CPU
    /// count, and reads still complete through it.
    @Test(arguments: ExecutionMode.allCases)
    func aLimitOfOneGivesMSIXOneQueue(_ mode: ExecutionMode) throws {
        try withVerifiedNVMe(mode, .msix, ioQueueLimit: 1) { (controller, _, device) throws in
            #expect(controller.ioQueueCount == 1)
            #expect(try Self.readOnEveryQueue(controller, device, perQueue: 16, completion: .msix) == (0..<16).map { $0 })
        }
    }

    /// A limit outside 1 to `maximumIOQueues` is refused before the device is touched.
    @Test(arguments: [0, NVMeController.maximumIOQueues + 1])
    func anIOQueueLimitOutOfRangeIsRefused(_ limit: Int) throws {
        let model = NVMeModel()
        let device = try ModeledDevice(model)
        defer { device.close() }
        let runtime = try makeRuntime(.user, options: RuntimeOptions())
        defer { runtime.shutdown() }
        #expect {
            _ = try NVMeController(device: device, runtime: runtime, completion: .msix, ioQueueLimit: limit)
        } throws: { error in
            guard case NVMeController.Failure.badRequest(let message) = error else { return false }
            return message.contains("\(limit)")
        }
    }

    /// Sixteen submissions in one batch write the submission tail doorbell once; and
    /// submissions made by completion handlers while a batch of completions is handed over
    /// are one batch too.
    @Test(arguments: [NVMeController.Completion.msix, .poll])
    func aBatchOfSubmissionsRingsTheDoorbellOnce(_ completion: NVMeController.Completion) throws {
        try withVerifiedNVMe(.user, completion) { (controller, model, device) throws in
            let pool = try DMAPool(device: device, chunkSize: 4096, count: 16)
            let done = Atomic<Int>(0)
            controller.setCompletionHandler { entry in if entry.succeeded { done.add(1, ordering: .relaxed) } }
            let before = model.submissionDoorbellWrites[1, default: 0]
            try controller.batchSubmissions {
                for tag in 0..<16 {
                    try controller.submitRead(lba: UInt64(tag * 8), blocks: 8, into: pool.chunk(tag), of: pool,
                                              tag: UInt64(tag), queue: 0)
                }
            }
            #expect(model.submissionDoorbellWrites[1, default: 0] - before == 1)
            for _ in 0..<10_000 where done.load(ordering: .relaxed) < 16 {
                if completion == .poll { try controller.pollCompletions() }
                usleep(1000)
            }
            #expect(done.load(ordering: .relaxed) == 16)
            #expect(model.ioCommands[0x02] == 16)
        }
    }
}
