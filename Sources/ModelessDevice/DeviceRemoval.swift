import ModelessSystem
import Synchronization

/// Why a device is going away, as its driver is told.
public enum RemovalCause: Sendable, Equatable, CustomStringConvertible {
    /// The kernel asked for the device back: an unbind (`modeless unbind`, another tool's) or a
    /// hot-unplug. Over VFIO this is the device request interrupt (`VFIO_PCI_REQ_IRQ_INDEX`);
    /// the kernel's unbind waits until the device is closed.
    case requested
    /// The device stopped answering under the driver (its registers read all-ones): it was
    /// pulled out, powered off or fell off the bus. `why` says what the driver saw.
    case surprise(String)

    /// "device removed: …" and the cause, as drivers and commands report it.
    public var description: String {
        switch self {
        case .requested: "device removed: the kernel asked for it back (unbind or hot-unplug)"
        case .surprise(let why): "device removed: it stopped answering (\(why))"
        }
    }
}

/// A device's removal channel: where the kernel's request to release the device arrives, and
/// where a driver that found the device gone reports it, so that both reach the driver's
/// remove routine the same way (`DriverRuntime.onRemoval(of:name:)`, in ModelessRuntime).
///
/// It is an eventfd, closed when the last holder (the open device, a watcher) lets go of it
/// (``letGo()``), so that nobody reads or writes a descriptor number that was reused. VFIO registers it as the device request interrupt when the device is
/// opened, and the kernel adds to it when it wants the device back; ``report(_:)`` adds to it
/// from the driver's side. The first cause is kept: a request after a surprise removal (or
/// the reverse) does not change what the driver is told.
public final class DeviceRemoval: @unchecked Sendable {
    private let notifier: EventNotifier
    /// 0: no cause yet; 1: one is being recorded; 2: ``recorded`` holds it (set once).
    private let state = Atomic<Int>(0)
    private var recorded: RemovalCause?
    /// The device while it is open, and each watcher: the eventfd closes when none is left.
    private let holders = Atomic<Int>(1)

    /// A new channel with its own eventfd.
    public init(system: any SystemCalls = LinuxSystemCalls()) throws(SystemError) {
        notifier = try EventNotifier(system: system, nonBlocking: true)
    }

    /// The eventfd the kernel signals (registered with VFIO) and a watcher polls.
    public var fd: Int32 { notifier.fd }

    /// What removed the device, once something did: a reported cause, or
    /// ``RemovalCause/requested`` once a watcher took a signal that came without one (the kernel's).
    public var reportedCause: RemovalCause? {
        state.load(ordering: .acquiring) == 2 ? recorded : nil
    }

    /// Records `cause` (unless one was recorded before) and wakes the watcher. Legal at any
    /// level, an ISR's included: it takes no lock and only writes the eventfd.
    public func report(_ cause: RemovalCause) {
        guard record(cause) else { return }
        signal()
    }

    /// What the kernel does when it wants the device back: signals the eventfd without a
    /// cause. For backends and models that stand in for the kernel.
    public func request() {
        signal()
    }

    /// Adds a holder (a watcher): the eventfd stays open until it lets go. False when every
    /// holder already let go (the device was closed, nobody watches): the eventfd is closed.
    public func hold() -> Bool {
        var count = holders.load(ordering: .acquiring)
        while count > 0 {
            let (exchanged, current) = holders.compareExchange(expected: count, desired: count + 1, ordering: .acquiringAndReleasing)
            if exchanged { return true }
            count = current
        }
        return false
    }

    /// Removes a holder (the device when it closes, a watcher when it ends); the last closes the eventfd.
    public func letGo() {
        if holders.wrappingSubtract(1, ordering: .acquiringAndReleasing).newValue == 0 { notifier.close() }
    }

    /// Adds one to the eventfd while it is open.
    private func signal() {
        guard hold() else { return }
        try? notifier.signal()
        letGo()
    }

    /// Takes the eventfd's count after it became readable and returns the cause: the reported
    /// one, or ``RemovalCause/requested`` (recorded now) when only the kernel signalled.
    /// `nil` when nothing was signalled.
    public func take() -> RemovalCause? {
        var value: UInt64 = 0
        let read = withUnsafeMutableBytes(of: &value) { Glibc.read(notifier.fd, $0.baseAddress!, 8) }
        if read == 8, value > 0 { _ = record(.requested) }
        while state.load(ordering: .acquiring) == 1 { sched_yield() }  // Another reporter is storing its cause.
        return reportedCause
    }

    /// Stores `cause` if it is the first; whether it was.
    private func record(_ cause: RemovalCause) -> Bool {
        guard state.compareExchange(expected: 0, desired: 1, ordering: .acquiring).exchanged else { return false }
        recorded = cause
        state.store(2, ordering: .releasing)
        return true
    }
}

#if canImport(Glibc)
import Glibc
#endif

/// A driver's failure that can say the device is gone, so that a device's owner (a command, a
/// service) can tell a removal, which is an orderly end, from a fault.
public protocol DeviceRemovalReporting: Error {
    /// Whether the failure says the device was removed or stopped answering.
    var isDeviceRemoval: Bool { get }
}
