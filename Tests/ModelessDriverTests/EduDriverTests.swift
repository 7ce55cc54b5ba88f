#if canImport(Glibc)
import Glibc
#endif
import ModelessDevice
import ModelessDrivers
import ModelessModels
import ModelessRuntime
import Synchronization
import Testing

/// What the self-test must find on any edu, real or modeled, in any mode.
let expectedEduReport = EduReport(
    identification: 0x0100_00ed, alive: true,
    factorials: [0: 1, 1: 1, 5: 120, 10: 3_628_800, 12: 479_001_600, 13: 1_932_053_504],
    interruptsRaised: 3, dmaBytes: 2048, dmaMatches: true)

/// Runs the edu driver's self-test on `device` under a verifier; returns the report, the
/// interrupts its ISR counted, and the verifier's reports.
func runEdu(on device: ModeledDevice, _ mode: ExecutionMode, _ kind: InterruptKind,
            trace: InterruptTrace? = nil) throws -> (EduReport, Int, [DriverVerifier.Report]) {
    let verifier = DriverVerifier()
    let runtime = try makeRuntime(mode, options: RuntimeOptions(trace: trace, verifier: verifier))
    defer { runtime.shutdown() }
    let driver = try EduDriver(device: device, runtime: runtime, interrupt: kind)
    defer { driver.stop() }
    return (try driver.selfTest(), driver.interruptCounts.interrupts, verifier.reports)
}

func runEdu(_ mode: ExecutionMode, _ kind: InterruptKind, trace: InterruptTrace? = nil) throws -> (EduReport, Int, [DriverVerifier.Report]) {
    let device = try ModeledDevice(EduModel(), dmaAddressBits: 28)
    defer { device.close() }
    return try runEdu(on: device, mode, kind, trace: trace)
}

/// Leaves `device` as a driver killed in the middle of a DMA round trip leaves it: the transfer
/// back to RAM was started with an interrupt on completion, then the process died: its vector
/// and DMA mappings are gone and bus mastering is off, nothing was acknowledged. With
/// `transferFinished`, the transfer ended before the death: its "DMA done" cause is pending and
/// (with INTx) the line asserted and masked; without, the transfer is still running.
func leaveAsAKilledDriverWould(_ device: ModeledDevice, _ kind: InterruptKind, transferFinished: Bool) throws {
    let registers = try device.region(0)
    try device.config.setBusMastering(true)
    let vector = try #require(try device.enableInterrupts(kind, count: 1).first)
    let buffer = try device.allocateDMA(size: 2048)
    // The second half of a round trip: device buffer → RAM, interrupt when done.
    try registers.write64(EduModel.dmaBufferAddress, at: EduModel.Register.dmaSource)
    try registers.write64(buffer.deviceAddress, at: EduModel.Register.dmaDestination)
    try registers.write64(2048, at: EduModel.Register.dmaCount)
    try registers.write64(0b111, at: EduModel.Register.dmaCommand)
    if transferFinished {
        var descriptor = pollfd(fd: vector.fd, events: Int16(POLLIN), revents: 0)
        #expect(poll(&descriptor, 1, 5000) == 1, "the transfer's interrupt arrived")
        #expect(try registers.read32(at: EduModel.Register.interruptStatus) == EduModel.dmaInterrupt)
    } else {
        #expect(try registers.read64(at: EduModel.Register.dmaCommand) & 1 == 1, "the transfer is still running")
    }
    try device.disableInterrupts()
    buffer.free()
    try device.config.setBusMastering(false)
}

@Suite("The edu driver against the edu model")
struct EduDriverTests {
    @Test(arguments: ExecutionMode.allCases, [InterruptKind.msi, .intx])
    func sameResultsInEveryModeAndInterruptType(_ mode: ExecutionMode, _ kind: InterruptKind) throws {
        let (report, interrupts, reports) = try runEdu(mode, kind)
        #expect(report == expectedEduReport)
        #expect(interrupts == 6 + 3 + 2, "6 factorials, 3 raised, 2 DMA transfers")
        #expect(reports.isEmpty, "\(reports)")
    }

    /// A driver killed after its transfer ended left "DMA done" pending (and the INTx line
    /// asserted): the next driver acknowledges it at start instead of taking it for its own
    /// transfer's (which read back a buffer the device had not written yet).
    @Test(arguments: ExecutionMode.allCases, [InterruptKind.msi, .intx])
    func aKilledPredecessorsPendingCauseIsNotTakenForOurs(_ mode: ExecutionMode, _ kind: InterruptKind) throws {
        let device = try ModeledDevice(EduModel(dmaDelay: .milliseconds(20)), dmaAddressBits: 28)
        defer { device.close() }
        try leaveAsAKilledDriverWould(device, kind, transferFinished: true)
        let (report, interrupts, reports) = try runEdu(on: device, mode, kind)
        #expect(report == expectedEduReport)
        #expect(interrupts == 11, "only this driver's own interrupts")
        #expect(reports.isEmpty, "\(reports)")
    }

    /// A driver killed mid-transfer left the transfer running: the next driver waits for it to
    /// end before enabling interrupts (the device ignores a new transfer until then).
    @Test(arguments: ExecutionMode.allCases, [InterruptKind.msi, .intx])
    func aTransferAKilledPredecessorLeftRunningEndsBeforeStart(_ mode: ExecutionMode, _ kind: InterruptKind) throws {
        let device = try ModeledDevice(EduModel(dmaDelay: .milliseconds(150)), dmaAddressBits: 28)
        defer { device.close() }
        try leaveAsAKilledDriverWould(device, kind, transferFinished: false)
        let (report, interrupts, reports) = try runEdu(on: device, mode, kind)
        #expect(report == expectedEduReport)
        #expect(interrupts == 11, "only this driver's own interrupts")
        #expect(reports.isEmpty, "\(reports)")
    }

    @Test(arguments: ExecutionMode.allCases)
    func userModeStagesRunInTheSeedsOrder(_ mode: ExecutionMode) throws {
        let trace = InterruptTrace()
        _ = try runEdu(mode, .msi, trace: trace)
        let records = trace.snapshot()
        let interruptStages = records.filter { $0.subject == 0 && $0.stage != .dpcStart && $0.stage != .dpcEnd }
        let expected: [InterruptTrace.Stage] = mode == .user
            ? [.notified, .genericISRFused, .lockTaken, .realISREnter, .realISRExit, .lockReleased]
            : [.notified, .lockTaken, .genericISR, .realISREnter, .realISRExit, .lockReleased]
        // Every interrupt goes through the stages in order, on one thread.
        var index = 0
        var interrupts = 0
        while index < interruptStages.count {
            guard interruptStages[index].stage == .notified else { index += 1; continue }
            // In the kernel emulation an interrupt that arrives while a thread has interrupts
            // disabled (a SpinLock held) is latched, and the thread that enables them again
            // delivers it: the same stages after `latched`, on that thread.
            let latched = mode == .kernelEmulation && interruptStages.indices.contains(index + 1)
                && interruptStages[index + 1].stage == .latched
            let start = latched ? index + 2 : index
            let stages = latched ? Array(expected.dropFirst()) : expected
            let group = Array(interruptStages[start..<min(start + stages.count, interruptStages.count)])
            #expect(group.map(\.stage) == stages)
            #expect(Set(group.map(\.thread)).count == 1)
            interrupts += 1
            index = start + stages.count
        }
        #expect(interrupts >= 11)
        // The completion DPC runs after the ISR that queued it.
        let firstISRExit = try #require(records.first { $0.stage == .realISRExit })
        let firstDPC = try #require(records.first { $0.stage == .dpcStart })
        #expect(firstDPC.sequence > firstISRExit.sequence)
    }

    @Test func aRemovedDeviceIsRefused() throws {
        let device = try ModeledDevice(EduModel())
        device.faults.surpriseRemoved = true
        let runtime = try makeRuntime(.user)
        defer { runtime.shutdown(); device.close() }
        #expect(throws: EduDriver.Failure.notEdu(identification: 0xFFFF_FFFF)) {
            _ = try EduDriver(device: device, runtime: runtime)
        }
    }

    /// A device that goes away under a running driver reads all ones: the operation waiting
    /// for it fails with "device not responding" instead of a timeout, the driver's state says
    /// so from then on, and the next operation fails the same way.
    @Test(arguments: ExecutionMode.allCases)
    func aDeviceThatStopsAnsweringIsReported(_ mode: ExecutionMode) throws {
        let device = try ModeledDevice(EduModel(), dmaAddressBits: 28)
        defer { device.close() }
        let verifier = DriverVerifier()
        let runtime = try makeRuntime(mode, options: RuntimeOptions(verifier: verifier))
        defer { runtime.shutdown() }
        let driver = try EduDriver(device: device, runtime: runtime, interrupt: .msi)
        defer { driver.stop() }
        driver.operationTimeout = .milliseconds(300)
        #expect(try driver.factorial(5) == 120)
        #expect(driver.isResponding)
        device.faults.surpriseRemoved = true
        #expect(throws: EduDriver.Failure.notResponding) { try driver.factorial(6) }
        #expect(!driver.isResponding)
        #expect(throws: EduDriver.Failure.notResponding) { try driver.raiseInterrupt(0x1000) }
        #expect(EduDriver.Failure.notResponding.description.contains("device not responding"))
        #expect(verifier.reports.isEmpty, "\(verifier.reports)")
    }

    @Test(arguments: ExecutionMode.allCases)
    func aStuckInterruptKeepsCallingTheISR(_ mode: ExecutionMode) throws {
        let device = try ModeledDevice(EduModel())
        let verifier = DriverVerifier()
        let runtime = try makeRuntime(mode, options: RuntimeOptions(verifier: verifier))
        defer { runtime.shutdown(); device.close() }
        let driver = try EduDriver(device: device, runtime: runtime, interrupt: .intx)
        device.faults.stuckInterrupt = true
        try driver.raiseInterrupt(0x1000)
        let start = driver.interruptCounts.isrCalls
        for _ in 0..<2000 where driver.interruptCounts.isrCalls < start + 20 { usleep(5000) }
        #expect(driver.interruptCounts.isrCalls >= start + 20, "a level that stays asserted fires after each acknowledge")
        device.faults.stuckInterrupt = false
        driver.stop()
        #expect(verifier.reports.isEmpty, "\(verifier.reports)")
    }

    /// A DPC that calls the driver's waiting API would stall the interrupt that ends the wait:
    /// it is refused at once (and reported by the verifier), and the driver goes on working.
    @Test(arguments: ExecutionMode.allCases)
    func waitingFromADPCIsRefused(_ mode: ExecutionMode) throws {
        let device = try ModeledDevice(EduModel(), dmaAddressBits: 28)
        defer { device.close() }
        let verifier = DriverVerifier()
        let runtime = try makeRuntime(mode, options: RuntimeOptions(verifier: verifier))
        defer { runtime.shutdown() }
        let driver = try EduDriver(device: device, runtime: runtime)
        defer { driver.stop() }
        let outcome = Mutex<String?>(nil)
        let caller = runtime.makeDPC("caller") {
            do {
                _ = try driver.factorial(5)
                outcome.withLock { $0 = "not refused" }
            } catch {
                outcome.withLock { $0 = "\(error)" }
            }
        }
        caller.queue()
        for _ in 0..<5000 where outcome.withLock({ $0 }) == nil { usleep(1000) }
        let message = try #require(outcome.withLock { $0 })
        #expect(message.contains("ISR or DPC"), "\(message)")
        usleep(20_000)  // an interrupt from a half-started operation would have landed by now
        #expect(try driver.factorial(6) == 720, "the refused call left nothing behind")
        #expect(verifier.reports.map(\.rule) == [.sleepAtInterruptLevel], "\(verifier.reports)")
    }
}
