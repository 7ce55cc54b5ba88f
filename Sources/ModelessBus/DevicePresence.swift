import ModelessSystem
import Synchronization

/// Whether one PCI function is there to be driven in user mode: present on the bus and bound
/// to vfio-pci or uio_pci_generic. It follows the kernel's (or udev's) events for the function
/// on a thread of its own, so that a removal and a return (a re-plug, a re-bind) are seen as
/// they happen and named; the bus itself is the authority when asked.
///
/// A supervisor asks it before restarting an instance whose device may be gone
/// (`Supervisor.deviceAvailability`). With a ``Rebinding``, a function that went away and came
/// back (a re-plug) on another driver, or none, is given back to its user-mode driver by its
/// persistent override, once per return, as at boot.
public final class DevicePresence: @unchecked Sendable {
    /// The function watched.
    public let address: PCIAddress
    private let bus: PCIBus
    private let rebinding: Rebinding?
    private let shared = Shared()
    private var thread: SystemThread?

    /// How a function that returns is handed back to its user-mode driver: its persistent
    /// override (`modeless bind --persist`), applied with every check of a bind
    /// (``PCIBinder/applyOverrides(_:only:)``). A function without an override is left alone,
    /// and so is one that was only unbound (`modeless unbind` without `--persist`): only a
    /// function that left the bus and came back is bound again.
    public struct Rebinding: Sendable {
        /// Where the persistent overrides are.
        public var overrides: OverrideStore
        /// What applies them.
        public var binder: PCIBinder
        /// How long after the return a refused bind is tried again (at each look): a function
        /// just added may not take a driver yet (the kernel finishes adding it, assigns its
        /// resources, then lets drivers match it). Only the last refusal is reported.
        public var settleNanoseconds: UInt64
        /// Told what the return led to: "0000:01:00.0 is back: bound to vfio-pci by its
        /// persistent override", or why it was not.
        public var report: @Sendable (String) -> Void

        /// Re-binding by the overrides in `overrides`, through `binder`'s checks, retried for
        /// `settleNanoseconds` after the function returns, each outcome told to `report`.
        public init(overrides: OverrideStore = .standard(), binder: PCIBinder = PCIBinder(),
                    settleNanoseconds: UInt64 = 5_000_000_000, report: @escaping @Sendable (String) -> Void = { _ in }) {
            self.overrides = overrides
            self.binder = binder
            self.settleNanoseconds = settleNanoseconds
            self.report = report
        }
    }

    /// What the event thread and the callers share.
    private final class Shared: Sendable {
        let lastEvent = Mutex<PCIEvent?>(nil)
        let stopping = Atomic<Bool>(false)
        /// Whether the function was seen gone (its `remove` event, or no directory on the bus)
        /// since its override was last applied: its return then applies the override, once.
        let wentAway = Atomic<Bool>(false)
        /// Until when a refused bind of the returned function is tried again; nil when no return is pending.
        let retryUntil = Mutex<UInt64?>(nil)
    }

    /// Starts following `address`. Without an event monitor (no permission for the netlink
    /// socket) it still answers, from the bus alone. With `rebinding`, a return applies the
    /// function's persistent override (see ``Rebinding``).
    public init(_ address: PCIAddress, bus: PCIBus = PCIBus(), rebinding: Rebinding? = nil) {
        self.address = address
        self.bus = bus
        self.rebinding = rebinding
        guard let monitor = try? UdevMonitor() else { return }
        let owned = MonitorOwner(monitor)
        thread = try? SystemThread(name: "presence \(address)") { [shared] in
            while !shared.stopping.load(ordering: .acquiring) {
                guard let event = try? owned.monitor.next(timeoutMilliseconds: 200), event.address == address else { continue }
                if event.action == "remove" { shared.wentAway.store(true, ordering: .releasing) }
                shared.lastEvent.withLock { $0 = event }
            }
        }
    }

    deinit { stop() }

    /// Stops following events. Idempotent.
    public func stop() {
        guard !shared.stopping.exchange(true, ordering: .acquiringAndReleasing) else { return }
        thread?.join()
    }

    /// The last event seen for the function (`remove`, `add`, `unbind`, `bind driver=vfio-pci`), if any.
    public var lastChange: PCIEvent? { shared.lastEvent.withLock { $0 } }

    /// nil when the function is present and bound to a user-mode driver; else why it cannot
    /// be driven, with the last event seen for it. A function back from a removal, with a
    /// ``Rebinding``, is first bound by its persistent override (once per return).
    public func unavailability() -> String? {
        guard FileAccess.isDirectory(bus.path(of: address)) else {
            shared.wentAway.store(true, ordering: .releasing)
            return "\(address) is not on the bus\(lastEventNote)"
        }
        if isOnUserModeDriver { return nil }
        var note = ""
        if let rebinding, let final = returnPending(rebinding) {
            if let refusal = applyOverride(rebinding, reportingRefusal: final) {
                note = "; its persistent override was not applied\(final ? "" : " yet"): \(refusal)"
            } else {
                shared.retryUntil.withLock { $0 = nil }
            }
            if isOnUserModeDriver { return nil }
        }
        let driver = FileAccess.linkTargetName("\(bus.path(of: address))/driver")
        return "\(address) is bound to \(driver ?? "no driver"), not a user-mode driver\(note)\(lastEventNote)"
    }

    /// Whether a return waits for its override: nil when not; else whether this is the last try.
    private func returnPending(_ rebinding: Rebinding) -> Bool? {
        let now = monotonicNanoseconds()
        let returned = shared.wentAway.exchange(false, ordering: .acquiringAndReleasing)
        return shared.retryUntil.withLock { until -> Bool? in
            if returned { until = now + rebinding.settleNanoseconds }
            guard let deadline = until else { return nil }
            if now >= deadline { until = nil }
            return now >= deadline
        }
    }

    private var isOnUserModeDriver: Bool {
        FileAccess.linkTargetName("\(bus.path(of: address))/driver").flatMap(UserModeDriver.init(rawValue:)) != nil
    }

    private var lastEventNote: String { lastChange.map { " (last event: \($0))" } ?? "" }

    /// Applies the function's persistent override, if it has one, and reports a success (a
    /// refusal only when `reportingRefusal`); the refusal's message when it was not applied.
    private func applyOverride(_ rebinding: Rebinding, reportingRefusal: Bool) -> String? {
        do throws(BusError) {
            guard let override = try rebinding.overrides.override(for: address) else { return nil }
            guard let applied = try rebinding.binder.applyOverrides(rebinding.overrides, only: [address]).first else { return nil }
            switch applied.result {
            case .success:
                rebinding.report("\(address) is back: bound to \(override.driver.rawValue) by its persistent override (\(rebinding.overrides.file(for: address)))")
                return nil
            case .failure(let error):
                throw error
            }
        } catch {
            let refusal = "\(error.message) (\(error.remedy))"
            if reportingRefusal { rebinding.report("\(address) is back, but its persistent override was not applied: \(refusal)") }
            return refusal
        }
    }
}

/// The event monitor, handed to the one thread that reads it.
private final class MonitorOwner: @unchecked Sendable {
    let monitor: UdevMonitor
    init(_ monitor: UdevMonitor) { self.monitor = monitor }
}
