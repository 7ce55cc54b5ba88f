import ModelessSystem
import Synchronization

/// Whether one PCI function is there to be driven in user mode: present on the bus and bound
/// to vfio-pci or uio_pci_generic. It follows the kernel's (or udev's) events for the function
/// on a thread of its own, so that a removal and a return (a re-plug, a re-bind) are seen as
/// they happen and named; the bus itself is the authority when asked.
///
/// A supervisor asks it before restarting an instance whose device may be gone
/// (`Supervisor.deviceAvailability`).
public final class DevicePresence: @unchecked Sendable {
    /// The function watched.
    public let address: PCIAddress
    private let bus: PCIBus
    private let shared = Shared()
    private var thread: SystemThread?

    /// What the event thread and the callers share.
    private final class Shared: Sendable {
        let lastEvent = Mutex<PCIEvent?>(nil)
        let stopping = Atomic<Bool>(false)
    }

    /// Starts following `address`. Without an event monitor (no permission for the netlink
    /// socket) it still answers, from the bus alone.
    public init(_ address: PCIAddress, bus: PCIBus = PCIBus()) {
        self.address = address
        self.bus = bus
        guard let monitor = try? UdevMonitor() else { return }
        let owned = MonitorOwner(monitor)
        thread = try? SystemThread(name: "presence \(address)") { [shared] in
            while !shared.stopping.load(ordering: .acquiring) {
                guard let event = try? owned.monitor.next(timeoutMilliseconds: 200) else { continue }
                if event.address == address { shared.lastEvent.withLock { $0 = event } }
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
    /// be driven, with the last event seen for it.
    public func unavailability() -> String? {
        let seen = lastChange.map { " (last event: \($0))" } ?? ""
        guard FileAccess.isDirectory(bus.path(of: address)) else { return "\(address) is not on the bus\(seen)" }
        let driver = FileAccess.linkTargetName("\(bus.path(of: address))/driver")
        guard let driver, UserModeDriver(rawValue: driver) != nil else {
            return "\(address) is bound to \(driver ?? "no driver"), not a user-mode driver\(seen)"
        }
        return nil
    }
}

/// The event monitor, handed to the one thread that reads it.
private final class MonitorOwner: @unchecked Sendable {
    let monitor: UdevMonitor
    init(_ monitor: UdevMonitor) { self.monitor = monitor }
}
