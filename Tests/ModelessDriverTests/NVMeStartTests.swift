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

/// How the NVMe driver starts (the probe, the reset that clears what a predecessor left) and
/// how it reports a controller that stops answering.
@Suite("The NVMe driver's start and a lost controller")
struct NVMeStartTests {
    /// Starts a controller on `model` and expects it refused with `expected` at once,
    /// leaving no DMA memory behind.
    func expectRefused(_ model: any DeviceModel, removed: Bool, _ mode: ExecutionMode,
                       matching expected: (NVMeController.Failure) -> Bool) throws {
        let device = try ModeledDevice(model)
        defer { device.close() }
        device.faults.surpriseRemoved = removed
        let verifier = DriverVerifier()
        let runtime = try makeRuntime(mode, options: RuntimeOptions(verifier: verifier))
        defer { runtime.shutdown() }
        do {
            let controller = try NVMeController(device: device, runtime: runtime, completion: .msix)
            controller.stop()
            Issue.record("the controller started")
        } catch let failure as NVMeController.Failure {
            #expect(expected(failure), "\(failure)")
        }
        // At once, not after CAP.TO: nothing polled, at most CAP and CSTS read.
        #expect(device.registerAccesses <= 2, "register accesses before the refusal: \(device.registerAccesses)")
        #expect(device.liveDMABufferCount == 0)
        #expect(verifier.reports.isEmpty, "\(verifier.reports)")
    }

    @Test(arguments: ExecutionMode.allCases)
    func aDeviceReadingAllOnesIsRefusedAsNotResponding(_ mode: ExecutionMode) throws {
        try expectRefused(NVMeModel(), removed: true, mode) { failure in
            guard case .notResponding(let why) = failure else { return false }
            return why.contains("all-ones") && "\(failure)".hasPrefix("device not responding")
        }
    }

    @Test func aDeviceThatIsNotNVMeIsRefused() throws {
        try expectRefused(E1000Model(), removed: false, .user) { failure in
            guard case .notAnNVMeController(let why) = failure else { return false }
            return why.contains("MQES")
        }
    }

    /// A predecessor killed mid-I/O leaves the controller enabled, its queues pointing at memory
    /// that is gone, and completions posted but never taken (with INTx, the line asserted).
    /// The next start resets the controller and works, and none of the predecessor's
    /// completions is taken as its own.
    @Test(arguments: ExecutionMode.allCases)
    func aControllerLeftEnabledWithStaleCompletionsStartsClean(_ mode: ExecutionMode) throws {
        let model = NVMeModel()
        do {
            let device = try ModeledDevice(model)
            let runtime = try makeRuntime(.user)
            let controller = try NVMeController(device: device, runtime: runtime, completion: .poll)
            let pool = try DMAPool(device: device, chunkSize: 4096, count: 8)
            for tag in 0..<8 {
                try controller.submitRead(lba: UInt64(tag * 8), blocks: 8, into: pool.chunk(tag), of: pool, tag: UInt64(tag))
            }
            for _ in 0..<5_000 where model.ioCommands[0x02, default: 0] < 8 { usleep(1000) }
            #expect(model.ioCommands[0x02] == 8, "the predecessor's reads completed, unpolled")
            // Killed: no stop(); the device goes with the process.
            runtime.shutdown()
            device.close()
        }
        #expect(model.read(bar: 0, offset: 0x14, width: 4) & 1 == 1, "left enabled")
        #expect(model.read(bar: 0, offset: 0x1C, width: 4) & 1 == 1, "left ready")

        try withVerifiedNVMe(mode, .intx, model: model) { controller, model, device in
            #expect(controller.identity.serialNumber == "model-nvme0")
            let data = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 13) }
            try controller.write(lba: 100, data)
            #expect(try controller.read(lba: 100, blocks: 8) == data)
            let tags = Mutex<[UInt64]>([])
            controller.setCompletionHandler { entry in tags.withLock { $0.append(entry.tag) } }
            let pool = try DMAPool(device: device, chunkSize: 4096, count: 4)
            for tag in 100..<104 {
                try controller.submitRead(lba: 0, blocks: 8, into: pool.chunk(tag - 100), of: pool, tag: UInt64(tag))
            }
            for _ in 0..<5_000 where tags.withLock({ $0.count }) < 4 { usleep(1000) }
            usleep(20_000)  // Time for anything stale to show up too.
            #expect(tags.withLock { $0.sorted() } == [100, 101, 102, 103], "only this run's completions")
            #expect(controller.isrCalls > 0)
        }
    }

    /// Commands in flight when the controller is lost complete with that (tagged ones flagged
    /// `deviceLost`, closures with the failure), and new ones are refused at once.
    @Test(arguments: ExecutionMode.allCases, [NVMeController.Completion.msix, .poll])
    func commandsInFlightFailWithALostController(_ mode: ExecutionMode, _ completion: NVMeController.Completion) throws {
        try withVerifiedNVMe(mode, completion) { controller, model, device in
            let outcomes = Mutex<[NVMeIOCompletion]>([])
            controller.setCompletionHandler { entry in outcomes.withLock { $0.append(entry) } }
            let closure = Mutex<Result<Void, NVMeController.Failure>?>(nil)
            let pool = try DMAPool(device: device, chunkSize: 4096, count: 8)
            model.dropCommands = true
            for tag in 0..<4 {
                try controller.submitRead(lba: 0, blocks: 8, into: pool.chunk(tag), of: pool, tag: UInt64(tag))
            }
            try controller.readAsync(lba: 0, blocks: 8, into: pool.chunk(4), of: pool) { result in
                closure.withLock { $0 = result }
            }
            device.faults.surpriseRemoved = true
            let lost = NVMeController.Failure.deviceLost("CSTS reads all-ones")
            #expect(throws: lost) { _ = try controller.read(lba: 0, blocks: 1) }
            for _ in 0..<5_000 where outcomes.withLock({ $0.count }) < 4 || closure.withLock({ $0 == nil }) {
                if completion == .poll { #expect(throws: lost) { try controller.pollCompletions() } }
                usleep(1000)
            }
            #expect(outcomes.withLock { $0.map(\.tag).sorted() } == [0, 1, 2, 3])
            #expect(outcomes.withLock { $0.allSatisfy { $0.deviceLost && !$0.succeeded } })
            #expect(closure.withLock { $0.map { if case .failure(lost) = $0 { true } else { false } } } == true)
            #expect(throws: lost) { try controller.submitRead(lba: 0, blocks: 8, into: pool.chunk(5), of: pool, tag: 9) }
        }
    }

    /// With one MSI-X vector, the admin and I/O queues share it instead of the start failing.
    @Test(arguments: ExecutionMode.allCases)
    func aSingleMSIXVectorIsShared(_ mode: ExecutionMode) throws {
        let model = NVMeModel(namespaces: [.init(identifier: 1, blocks: 2048)], msixVectors: 1)
        try withVerifiedNVMe(mode, .msix, model: model) { controller, _, _ in
            let data = [UInt8](repeating: 0x5A, count: 8192)
            try controller.write(lba: 8, data)
            #expect(try controller.read(lba: 8, blocks: 16) == data)
            #expect(controller.isrCalls >= 2)
        }
    }

    /// The ISR shares the queues only through spin locks: interrupt-driven synchronous and
    /// tagged commands from several threads at once, with every ISR run under the verifier,
    /// leave no report (a passive lock or a wait in the ISR or DPC would be one each time).
    @Test(arguments: ExecutionMode.allCases, [NVMeController.Completion.msix, .intx])
    func theInterruptPathTakesOnlySpinLocks(_ mode: ExecutionMode, _ completion: NVMeController.Completion) throws {
        try withVerifiedNVMe(mode, completion) { controller, _, device in
            let pool = try DMAPool(device: device, chunkSize: 4096, count: 16)
            let done = Atomic<Int>(0)
            controller.setCompletionHandler { _ in done.add(1, ordering: .relaxed) }
            let failures = Mutex<[String]>([])
            let threads = try (0..<2).map { index in
                try SystemThread(name: "nvme-sync\(index)") {
                    for round in 0..<20 {
                        do { _ = try controller.read(lba: UInt64(round), blocks: 1) } catch { failures.withLock { $0.append("\(error)") } }
                    }
                }
            }
            for round in 0..<64 {  // 16 in flight at most, so the synchronous reads find room.
                for _ in 0..<50_000 where round - done.load(ordering: .relaxed) >= 16 { usleep(100) }
                try controller.submitRead(lba: UInt64(round * 8), blocks: 8, into: pool.chunk(round % 16), of: pool,
                                          tag: UInt64(round))
            }
            for thread in threads { thread.join() }
            for _ in 0..<5_000 where done.load(ordering: .relaxed) < 64 { usleep(1000) }
            #expect(done.load(ordering: .relaxed) == 64)
            #expect(failures.withLock { $0 } == [])
            #expect(controller.isrCalls > 0)
        }
    }
}
