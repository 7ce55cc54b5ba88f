import ModelessBus
import ModelessSystem
import Synchronization

/// What UIO can do about removal. uio_pci_generic has no device request channel: the kernel
/// unbinds it, or unplugs the device, without asking the user of `/dev/uioN` first. The
/// follower listens for the kernel's (or udev's) `unbind` and `remove` events of the function
/// and reports them on the device's ``DeviceRemoval`` as a surprise removal, so that the
/// driver's remove routine runs as it does over VFIO, only after the fact.
final class UIORemovalFollower: @unchecked Sendable {
    let removal: DeviceRemoval
    private let stopping = Stopping()
    private var thread: SystemThread?

    /// How long the event thread waits before looking at the stop flag: what closing the device waits at most.
    static let pollMilliseconds: Int32 = 50

    private final class Stopping: Sendable {
        let flag = Atomic<Bool>(false)
    }

    /// The event monitor, handed to the one thread that reads it.
    private final class MonitorOwner: @unchecked Sendable {
        let monitor: UdevMonitor
        init(_ monitor: UdevMonitor) { self.monitor = monitor }
    }

    /// Starts following `address`; nil when events cannot be received (no permission for the
    /// netlink socket): the driver then learns of a removal only from its register reads.
    init?(_ address: PCIAddress, system: any SystemCalls) {
        guard let monitor = try? UdevMonitor(), let removal = try? DeviceRemoval(system: system) else { return nil }
        self.removal = removal
        let owner = MonitorOwner(monitor)
        guard removal.hold() else { return nil }
        do {
            thread = try SystemThread(name: "uio removal \(address)") { [stopping] in
                defer { removal.letGo() }
                while !stopping.flag.load(ordering: .acquiring) {
                    guard let event = try? owner.monitor.next(timeoutMilliseconds: Self.pollMilliseconds), event.address == address,
                          event.action == "unbind" || event.action == "remove" else { continue }
                    removal.report(.surprise("the kernel took it from uio_pci_generic (\(event.action)) without asking: UIO has no request channel"))
                    return
                }
            }
        } catch {
            removal.letGo()
            removal.letGo()
            return nil
        }
    }

    /// Stops following (the device is being closed) and lets go of the removal channel.
    func stop() {
        guard !stopping.flag.exchange(true, ordering: .acquiringAndReleasing) else { return }
        thread?.join()
        removal.letGo()
    }
}
