import ModelessDevice
import ModelessExamples
import ModelessModels
import ModelessRuntime
import Testing

/// The tutorial's tests (docs/writing-a-driver.md): the same driver, in both modes, on the
/// model, under the verifier.
@Suite("The countdown timer driver of the tutorial")
struct CountdownTimerTests {
    @Test(arguments: ExecutionMode.allCases, [InterruptKind.msi, .intx])
    func countdownsExpireByInterrupt(_ mode: ExecutionMode, _ kind: InterruptKind) throws {
        let device = try ModeledDevice(CountdownTimerModel())
        defer { device.close() }
        let verifier = DriverVerifier()
        let runtime = try makeRuntime(mode, options: RuntimeOptions(verifier: verifier))
        defer { runtime.shutdown() }
        let driver = try CountdownTimerDriver(device: device, runtime: runtime, interrupt: kind)
        defer { driver.stop() }

        for ticks: UInt32 in [1, 5, 20] {
            try driver.countDown(milliseconds: ticks)
            #expect(!driver.isRunning)
        }
        #expect(verifier.reports.isEmpty, "\(verifier.reports)")
    }

    @Test(arguments: ExecutionMode.allCases)
    func waitingFromADPCIsRefusedAndReported(_ mode: ExecutionMode) throws {
        let device = try ModeledDevice(CountdownTimerModel())
        defer { device.close() }
        let verifier = DriverVerifier()
        let runtime = try makeRuntime(mode, options: RuntimeOptions(verifier: verifier))
        defer { runtime.shutdown() }
        let driver = try CountdownTimerDriver(device: device, runtime: runtime)
        defer { driver.stop() }

        let finished = runtime.makeWaitEvent("test.finished")
        let refused = runtime.makeSpinLock("test.refused", false)
        let misuse = runtime.makeDPC("waits in a DPC") {
            do { try driver.countDown(milliseconds: 1) } catch { refused.withLock { $0 = true } }
            finished.signal()
        }
        misuse.queue()
        #expect(finished.wait(timeout: .seconds(5)) { refused.withLock { $0 } })
        #expect(verifier.reports.map(\.rule) == [.sleepAtInterruptLevel])
    }

    @Test func anotherDeviceIsRefusedBeforeAnyWrite() throws {
        let device = try ModeledDevice(EduModel(), dmaAddressBits: 28)
        defer { device.close() }
        let runtime = try makeRuntime(.kernelEmulation)
        defer { runtime.shutdown() }
        #expect(throws: CountdownTimerDriver.Failure.notATimer(identification: 0x0100_00ed)) {
            try CountdownTimerDriver(device: device, runtime: runtime)
        }
    }
}
