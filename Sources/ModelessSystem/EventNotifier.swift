#if canImport(Glibc)
import Glibc
#endif

/// An eventfd: a counter in the kernel that one side adds to and the other reads and clears.
///
/// VFIO signals interrupts by adding to one; a wait thread blocks reading it. Owns its
/// descriptor: ``close()`` releases it, and so does `deinit` if it was not closed.
public final class EventNotifier: @unchecked Sendable {
    /// The eventfd's descriptor, for handing to the kernel (VFIO's `VFIO_DEVICE_SET_IRQS`) or to
    /// an ``EventPoll``; valid until ``close()``.
    public let fd: Int32
    private let system: any SystemCalls
    private var isOpen = true

    /// A new eventfd (`EFD_CLOEXEC`, blocking unless `nonBlocking`).
    public init(system: any SystemCalls = LinuxSystemCalls(), nonBlocking: Bool = false) throws(SystemError) {
        self.system = system
        let flags = O_CLOEXEC | (nonBlocking ? O_NONBLOCK : 0)  // EFD_CLOEXEC and EFD_NONBLOCK have these values
        fd = try system.checked("eventfd", "interrupt notifier") { system.eventfd(0, flags) }
    }

    /// Takes `fd`, an eventfd opened elsewhere (received from another process), as its own:
    /// closed with it.
    public init(adopting fd: Int32, system: any SystemCalls = LinuxSystemCalls()) {
        self.system = system
        self.fd = fd
    }

    /// Blocks until the counter is non-zero, then returns it and resets it to zero.
    public func wait() throws(SystemError) -> UInt64 {
        var value: UInt64 = 0
        _ = try system.checked("read", "eventfd \(fd)") {
            withUnsafeMutableBytes(of: &value) { system.read(fd, $0.baseAddress!, 8) }
        }
        return value
    }

    /// Adds `count` to the counter, waking a waiter.
    public func signal(_ count: UInt64 = 1) throws(SystemError) {
        var value = count
        _ = try system.checked("write", "eventfd \(fd)") {
            withUnsafeBytes(of: &value) { system.write(fd, $0.baseAddress!, 8) }
        }
    }

    /// Closes the descriptor. Idempotent.
    public func close() {
        guard isOpen else { return }
        isOpen = false
        _ = system.close(fd)
    }

    deinit { close() }
}
