import ModelessDevice
import ModelessDrivers
import ModelessModels
import ModelessRuntime
import ModelessSystem
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Waits up to `seconds` for `condition`.
private func eventually(_ seconds: Double = 2, _ condition: () -> Bool) -> Bool {
    let deadline = monotonicNanoseconds() + UInt64(seconds * 1e9)
    while !condition() {
        guard monotonicNanoseconds() < deadline else { return false }
        usleep(1000)
    }
    return true
}

/// Removal, requested (the kernel's request through the device's removal channel, as VFIO's
/// request interrupt delivers it) and surprise (the device reads all-ones): each driver's
/// remove routine runs at passive level, fails what is in flight with "device removed", and
/// refuses what comes later at once, with the verifier clean.
@Suite("Device removal")
struct RemovalTests {
    @Test(arguments: ExecutionMode.allCases)
    func aRequestedRemovalFailsTheNVMeCommandsInFlightAndLaterOnes(_ mode: ExecutionMode) throws {
        try withVerifiedNVMe(mode, .msix) { controller, model, device in
            let pool = try DMAPool(device: device, chunkSize: 4096, count: 8)
            defer { pool.buffer.free() }
            let completions = Mutex<[NVMeIOCompletion]>([])
            controller.setCompletionHandler { completion in completions.withLock { $0.append(completion) } }
            let removedAt = Mutex<(RemovalCause, ExecutionContext)?>(nil)
            let runtime = controller.runtime
            controller.onRemoval { cause in removedAt.withLock { $0 = (cause, runtime.currentContext) } }
            model.dropCommands = true  // Nothing completes: every command stays in flight.
            for tag in 0..<4 {
                try controller.submitRead(lba: UInt64(tag * 8), blocks: 8, into: pool.chunk(tag), of: pool, tag: UInt64(tag))
            }
            let waiter = Mutex<(any Error)?>(nil)
            let reader = try SystemThread(name: "reader") {
                do { _ = try controller.read(lba: 0, blocks: 1) } catch { waiter.withLock { $0 = error } }
            }
            usleep(50_000)  // The reader is waiting for its dropped command.
            let started = monotonicNanoseconds()
            device.requestRemoval()
            #expect(eventually { completions.withLock { $0.count } == 4 })
            reader.join()
            let elapsed = monotonicNanoseconds() - started
            #expect(elapsed < controller.commandTimeout.wholeNanoseconds, "failed at once, not after a command timeout")
            #expect(completions.withLock { $0.allSatisfy(\.deviceLost) })
            let removed = NVMeController.Failure.removed(RemovalCause.requested.description)
            #expect(waiter.withLock { $0 as? NVMeController.Failure } == removed)
            #expect(controller.failure == removed)
            #expect(removed.isDeviceRemoval)
            #expect("\(removed)".contains("device removed"))
            #expect(eventually { removedAt.withLock { $0 } != nil }, "the owner is told after the commands failed")
            #expect(removedAt.withLock { $0?.0 } == .requested)
            #expect(removedAt.withLock { $0?.1 } == .passive, "the remove routine runs at passive level")
            let accesses = device.registerAccesses(during: {
                #expect(throws: removed) { try controller.write(lba: 0, [UInt8](repeating: 0, count: 512)) }
            }, counted: { [runtime = controller.runtime] in runtime.currentContext == .passive })
            #expect(accesses == 0, "a later request fails at once, without touching the controller")
        }
    }

    /// A controller that reads all-ones under the driver is found on the datapath and then
    /// handled as a requested removal: the remove routine runs too, with the surprise cause.
    @Test(arguments: ExecutionMode.allCases)
    func aSurpriseRemovalRunsTheNVMeRemoveRoutine(_ mode: ExecutionMode) throws {
        try withVerifiedNVMe(mode, .msix) { controller, _, device in
            let cause = Mutex<RemovalCause?>(nil)
            controller.onRemoval { removed in cause.withLock { $0 = removed } }
            device.faults.surpriseRemoved = true
            #expect(throws: NVMeController.Failure.deviceLost("CSTS reads all-ones")) { _ = try controller.read(lba: 0, blocks: 1) }
            #expect(eventually { cause.withLock { $0 } != nil })
            #expect(cause.withLock { $0 } == .surprise("CSTS reads all-ones"))
            #expect(controller.failure?.isDeviceRemoval == true)
        }
    }

    @Test(arguments: ExecutionMode.allCases)
    func aRequestedRemovalStopsTheEduDriver(_ mode: ExecutionMode) throws {
        let device = try ModeledDevice(EduModel(), dmaAddressBits: 28)
        defer { device.close() }
        try withVerifiedRuntime(mode) { runtime in
            let driver = try EduDriver(device: device, runtime: runtime, interrupt: .msi)
            defer { driver.stop() }
            #expect(try driver.factorial(5) == 120)
            device.requestRemoval()
            #expect(eventually { driver.removal != nil })
            let removed = EduDriver.Failure.removed(RemovalCause.requested.description)
            #expect(throws: removed) { try driver.factorial(6) }
            #expect(throws: removed) { _ = try driver.dmaRoundTrip([1, 2, 3]) }
            #expect(removed.isDeviceRemoval)
        }
    }

    @Test(arguments: ExecutionMode.allCases)
    func aRequestedRemovalStopsTheE1000Driver(_ mode: ExecutionMode) throws {
        let device = try ModeledDevice(E1000Model())
        defer { device.close() }
        try withVerifiedRuntime(mode) { runtime in
            let driver = try E1000Driver(device: device, runtime: runtime, interrupt: .intx)
            defer { driver.stop() }
            try driver.send([UInt8](repeating: 0xAB, count: 60))
            device.requestRemoval()
            #expect(eventually { driver.removal != nil })
            let removed = E1000Driver.Failure.removed(RemovalCause.requested.description)
            #expect(throws: removed) { try driver.send([UInt8](repeating: 0xAB, count: 60)) }
            #expect(driver.failure == removed)
        }
    }

    /// A stopped driver's watch has ended: a later request reaches no remove routine, and the
    /// device's removal channel is released with the device.
    @Test func aStoppedDriverIsNotCalledAgain() throws {
        try withVerifiedNVMe(.user, .msix) { controller, _, device in
            let called = Atomic<Int>(0)
            controller.onRemoval { _ in called.wrappingAdd(1, ordering: .relaxed) }
            controller.stop()
            device.requestRemoval()
            usleep(100_000)
            #expect(called.load(ordering: .relaxed) == 0)
        }
    }
}
