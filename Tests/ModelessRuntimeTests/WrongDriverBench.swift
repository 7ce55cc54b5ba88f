import ModelessDevice
import ModelessModels
import ModelessRuntime
import ModelessSystem
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A runtime under the verifier with a bare interrupt source, for the small, deliberately
/// wrong drivers that prove each of the verifier's rules fires.
final class WrongDriverBench: @unchecked Sendable {
    let device: ModeledDevice
    let verifier: DriverVerifier
    let runtime: any DriverRuntime
    let vector: InterruptVector
    private var attachment: InterruptAttachment?

    init(_ mode: ExecutionMode) throws {
        device = try ModeledDevice(InterruptSourceModel())
        verifier = DriverVerifier(onReport: { print($0) })
        runtime = try makeRuntime(mode, options: RuntimeOptions(interruptPriority: nil, dpcPriority: nil, verifier: verifier))
        vector = try device.enableInterrupts(.msi, count: 1)[0]
    }

    /// Attaches `isr` under `name`.
    func attach(_ name: String, isr: @escaping @Sendable () -> Void) throws {
        attachment = try runtime.attachInterrupt(vector, name: name, acknowledge: { 0 }) { _ in isr() }
    }

    /// Raises one interrupt and waits until its ISR has returned.
    func interrupt() throws {
        let before = attachment?.interrupts ?? 0
        try vector.trigger()
        #expect(waitUntil { (self.attachment?.interrupts ?? 0) > before }, "the ISR ran")
    }

    /// Waits (at most five seconds) until the verifier has made `count` reports.
    func waitForReports(_ count: Int = 1) {
        #expect(waitUntil { self.verifier.reports.count >= count }, "expected \(count) report(s), got \(verifier.reports)")
    }

    /// The rules reported, after a short settling time for any stray report.
    func rules() -> [DriverVerifier.Rule] {
        usleep(20_000)
        return verifier.rulesReported
    }

    func close() {
        runtime.shutdown()
        device.close()
    }
}

/// Polls `condition` every millisecond for at most `seconds`.
func waitUntil(seconds: Double = 5, _ condition: () -> Bool) -> Bool {
    let deadline = monotonicNanoseconds() + UInt64(seconds * 1e9)
    while !condition() {
        guard monotonicNanoseconds() < deadline else { return false }
        usleep(1000)
    }
    return true
}
