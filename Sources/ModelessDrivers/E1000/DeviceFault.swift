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
    private let removed = Atomic<Bool>(false)
    private let reason: SpinLock<String?>
    /// Where a device found not answering is reported as a surprise removal, if the backend has one.
    private let removal: DeviceRemoval?

    init(runtime: any DriverRuntime, name: String, removal: DeviceRemoval? = nil) {
        reason = runtime.makeSpinLock("\(name) fault", nil)
        self.removal = removal
    }

    /// Whether the first report was the device's removal (``reportRemoval(_:)``).
    var wasRemoved: Bool { isRaised && removed.load(ordering: .acquiring) }

    /// Records that the device was removed (the remove routine), unless something was
    /// reported before.
    func reportRemoval(_ cause: RemovalCause) {
        guard !isRaised else { return }
        let first = reason.withLock { reason -> Bool in
            guard reason == nil else { return false }
            reason = cause.description
            return true
        }
        if first { removed.store(true, ordering: .releasing) }
        raised.store(true, ordering: .releasing)
    }

    /// Whether the device has been reported as not responding.
    @inline(__always)
    var isRaised: Bool { raised.load(ordering: .acquiring) }

    /// The first report, if any.
    var description: String? { isRaised ? reason.withLock { $0 } : nil }

    /// Records `what` unless something was reported before, and reports the device's surprise
    /// removal, so that the driver's remove routine runs as for a requested removal.
    func report(_ what: String) {
        guard !isRaised else { return }
        let first = reason.withLock { reason -> Bool in
            guard reason == nil else { return false }
            reason = what
            return true
        }
        raised.store(true, ordering: .releasing)
        if first { removal?.report(.surprise(what)) }
    }

    /// Records a failed DMA access.
    func report(_ error: any Error) { report("a DMA access failed: \(error)") }
}
