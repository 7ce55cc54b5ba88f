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

func runEdu(_ mode: ExecutionMode, _ kind: InterruptKind, trace: InterruptTrace? = nil) throws -> (EduReport, Int) {
    let device = try ModeledDevice(EduModel(), dmaAddressBits: 28)
    defer { device.close() }
    let runtime = try makeRuntime(mode, options: RuntimeOptions(trace: trace))
    defer { runtime.shutdown() }
    let driver = try EduDriver(device: device, runtime: runtime, interrupt: kind)
    defer { driver.stop() }
    return (try driver.selfTest(), driver.interruptCounts.interrupts)
}

@Suite("The edu driver against the edu model")
struct EduDriverTests {
    @Test(arguments: ExecutionMode.allCases, [InterruptKind.msi, .intx])
    func sameResultsInEveryModeAndInterruptType(_ mode: ExecutionMode, _ kind: InterruptKind) throws {
        let (report, interrupts) = try runEdu(mode, kind)
        #expect(report == expectedEduReport)
        #expect(interrupts == 6 + 3 + 2, "6 factorials, 3 raised, 2 DMA transfers")
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
            let group = Array(interruptStages[index..<min(index + expected.count, interruptStages.count)])
            #expect(group.map(\.stage) == expected)
            #expect(Set(group.map(\.thread)).count == 1)
            interrupts += 1
            index += expected.count
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

    @Test(arguments: ExecutionMode.allCases)
    func aStuckInterruptKeepsCallingTheISR(_ mode: ExecutionMode) throws {
        let device = try ModeledDevice(EduModel())
        let runtime = try makeRuntime(mode)
        defer { runtime.shutdown(); device.close() }
        let driver = try EduDriver(device: device, runtime: runtime, interrupt: .intx)
        device.faults.stuckInterrupt = true
        try driver.raiseInterrupt(0x1000)
        let start = driver.interruptCounts.isrCalls
        for _ in 0..<2000 where driver.interruptCounts.isrCalls < start + 20 { usleep(5000) }
        #expect(driver.interruptCounts.isrCalls >= start + 20, "a level that stays asserted fires after each acknowledge")
        device.faults.stuckInterrupt = false
        driver.stop()
    }
    /// A DPC that calls the driver's waiting API would stall the interrupt that ends the wait:
    /// it is refused at once, and the driver goes on working.
    @Test(arguments: ExecutionMode.allCases)
    func waitingFromADPCIsRefused(_ mode: ExecutionMode) throws {
        let device = try ModeledDevice(EduModel(), dmaAddressBits: 28)
        defer { device.close() }
        let runtime = try makeRuntime(mode)
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
        #expect(message.contains("from an ISR or DPC"), "\(message)")
        usleep(20_000)  // an interrupt from a half-started operation would have landed by now
        #expect(try driver.factorial(6) == 720, "the refused call left nothing behind")
    }
}

#if canImport(Glibc)
import Glibc
#endif
