import ModelessDevice
import ModelessSystem
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A driver's remove routine, waiting for its device's removal: the kernel's request to
/// release the device (VFIO's device request interrupt: an unbind, a hot-unplug) or the
/// driver's own report that the device stopped answering (`DeviceRemoval.report(_:)`).
///
/// The routine runs once, at passive level, on the watch's own thread, as the kernel calls a
/// PCI driver's `.remove()`: it may wait and sleep; it stops I/O, fails what is outstanding
/// and lets the device's owner release it. ``cancel()`` ends the watch (a driver's stop does);
/// it is legal from the remove routine itself.
public final class RemovalWatch: @unchecked Sendable {
    private let removal: DeviceRemoval
    private let stopSignal: EventNotifier
    private let watcher = WatcherThread()
    private let cancelled = Atomic<Bool>(false)
    private var thread: SystemThread?

    init(_ removal: DeviceRemoval, name: String, _ remove: @escaping @Sendable (RemovalCause) -> Void) throws(SystemError) {
        self.removal = removal
        stopSignal = try EventNotifier()
        guard removal.hold() else { return }  // The device was closed: nothing will announce its removal.
        let stopFD = stopSignal.fd
        do {
            thread = try SystemThread(name: "\(name) remove") { [removal, watcher] in
                defer { removal.letGo() }
                Self.watch(removal, stopFD: stopFD, watcher, remove)
            }
        } catch {
            removal.letGo()
            throw error
        }
    }

    /// The watch thread: waits for the removal or the stop signal; calls `remove` on a removal.
    private static func watch(_ removal: DeviceRemoval, stopFD: Int32, _ watcher: WatcherThread,
                              _ remove: @Sendable (RemovalCause) -> Void) {
        watcher.identifier.store(WatcherThread.current, ordering: .releasing)
        var descriptors = [pollfd(fd: removal.fd, events: Int16(POLLIN), revents: 0),
                           pollfd(fd: stopFD, events: Int16(POLLIN), revents: 0)]
        while true {
            let ready = poll(&descriptors, 2, -1)
            if ready < 0 && errno == EINTR { continue }
            if ready < 0 || descriptors[1].revents != 0 { return }
            guard descriptors[0].revents != 0 else { continue }
            if let cause = removal.take() {
                remove(cause)
                return
            }
        }
    }

    /// Whether the device was removed (the routine was called, or is running).
    public var cause: RemovalCause? { removal.reportedCause }

    /// Ends the watch: the remove routine is not called after this returns (unless it is the
    /// caller). Idempotent.
    public func cancel() {
        guard !cancelled.exchange(true, ordering: .acquiringAndReleasing) else { return }
        try? stopSignal.signal()
        if watcher.identifier.load(ordering: .acquiring) != WatcherThread.current {
            thread?.join()
        } else {
            pthread_detach(pthread_self())  // The remove routine cancels its own watch: it ends by itself.
        }
    }

    deinit { cancel() }
}

/// Which thread runs a watch, so that ``RemovalWatch/cancel()`` called from the remove routine
/// does not wait for itself.
private final class WatcherThread: Sendable {
    let identifier = Atomic<UInt>(0)
    static var current: UInt { UInt(pthread_self()) }
}

extension DriverRuntime {
    /// Calls `remove` once, at passive level, when `device` is removed: the kernel asks for it
    /// back (an unbind or a hot-unplug, through VFIO's device request interrupt) or the driver
    /// reports it gone (`DeviceRemoval.report(_:)`, on finding all-ones). `nil` when the
    /// backend has no removal channel (UIO: see docs/device-access.md); the driver then learns
    /// of a removal only from its own register reads.
    public func onRemoval(of device: any DeviceAccess, name: String,
                          _ remove: @escaping @Sendable (RemovalCause) -> Void) throws(RuntimeError) -> RemovalWatch? {
        guard let removal = device.removal else { return nil }
        do { return try RemovalWatch(removal, name: name, remove) } catch {
            throw RuntimeError("cannot watch \(device.address) for removal: \(error)")
        }
    }
}
