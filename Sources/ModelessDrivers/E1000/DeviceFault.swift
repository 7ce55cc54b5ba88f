import ModelessDevice
import ModelessRuntime
import Synchronization

/// How a driver learns, once, that its device stopped answering: a register read all-ones,
/// the register region counted a failed access, or descriptor memory was freed under it.
///
/// The first report is kept and every later one ignored; from then on the driver's calls fail
/// at once with it. Reporting is legal at any level (ISR, DPC, thread) and the check on the
/// datapath is one atomic load.
final class DeviceFault: @unchecked Sendable {
    private let raised = Atomic<Bool>(false)
    private let reason: SpinLock<String?>

    init(runtime: any DriverRuntime, name: String) {
        reason = runtime.makeSpinLock("\(name) fault", nil)
    }

    /// Whether the device has been reported as not responding.
    @inline(__always)
    var isRaised: Bool { raised.load(ordering: .acquiring) }

    /// The first report, if any.
    var description: String? { isRaised ? reason.withLock { $0 } : nil }

    /// Records `what` unless something was reported before.
    func report(_ what: String) {
        guard !isRaised else { return }
        reason.withLock { reason in
            if reason == nil { reason = what }
        }
        raised.store(true, ordering: .releasing)
    }

    /// Records a failed DMA access.
    func report(_ error: any Error) { report("a DMA access failed: \(error)") }
}
