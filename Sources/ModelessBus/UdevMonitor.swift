import CLibUdev
import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// One PCI event from the kernel or udev: a device added or removed, a driver bound or unbound.
public struct PCIEvent: Sendable, Equatable, CustomStringConvertible {
    /// `add`, `remove`, `bind`, `unbind`, `change`, …
    public var action: String
    /// The function's address, when the event is for a PCI function.
    public var address: PCIAddress?
    /// The driver after the event (`bind`), or `nil`.
    public var driver: String?
    /// The sysfs path below `/sys`.
    public var devicePath: String

    /// The event in one line, e.g. `bind 0000:00:04.0 driver=vfio-pci`.
    public var description: String {
        "\(action) \(address?.description ?? devicePath)" + (driver.map { " driver=\($0)" } ?? "")
    }
}

/// Listens for PCI uevents through libudev.
///
/// ``Source/udev`` gets events after udev has processed them (rules applied, nodes created);
/// ``Source/kernel`` gets them straight from the kernel, which works where no udev daemon runs.
public final class UdevMonitor {
    /// Where events come from: the udev daemon or the kernel directly.
    public enum Source: String, Sendable, CaseIterable {
        case udev, kernel

        /// `udev` when a udev daemon is running, else `kernel`.
        public static var automatic: Source {
            FileAccess.exists("/run/udev/control") ? .udev : .kernel
        }
    }

    private let context: OpaquePointer
    private let monitor: OpaquePointer
    /// Where this monitor's events come from.
    public let source: Source

    /// Starts listening. Events that happen from now on are queued until read.
    public init(source: Source = .automatic) throws(BusError) {
        guard let context = udev_new() else {
            throw BusError(.systemFailure, "cannot create a udev context", remedy: "check that libudev is installed")
        }
        guard let monitor = udev_monitor_new_from_netlink(context, source.rawValue) else {
            udev_unref(context)
            throw BusError(.systemFailure, "cannot open a \(source.rawValue) event monitor (netlink)",
                           remedy: "run as root or in a network namespace that receives uevents")
        }
        self.context = context
        self.monitor = monitor
        self.source = source
        udev_monitor_filter_add_match_subsystem_devtype(monitor, "pci", nil)
        let status = udev_monitor_enable_receiving(monitor)
        if status < 0 {
            udev_monitor_unref(monitor)
            udev_unref(context)
            throw BusError(.systemFailure,
                           "cannot receive \(source.rawValue) events: \(Errno(rawValue: -status).description)",
                           remedy: "run as root")
        }
    }

    deinit {
        // The monitor owns its socket: unref closes it.
        udev_monitor_unref(monitor)
        udev_unref(context)
    }

    /// The next event, waiting at most `timeoutMilliseconds` (-1: forever). `nil` on timeout.
    public func next(timeoutMilliseconds: Int32) throws(SystemError) -> PCIEvent? {
        var descriptor = pollfd(fd: udev_monitor_get_fd(monitor), events: Int16(POLLIN), revents: 0)
        let ready = try systemCall("poll", "udev monitor") { poll(&descriptor, 1, timeoutMilliseconds) }
        guard ready > 0, let device = udev_monitor_receive_device(monitor) else { return nil }
        defer { udev_device_unref(device) }
        func text(_ pointer: UnsafePointer<CChar>?) -> String? { pointer.map { String(cString: $0) } }
        let name = text(udev_device_get_sysname(device)) ?? ""
        return PCIEvent(action: text(udev_device_get_action(device)) ?? "unknown",
                        address: PCIAddress(name),
                        driver: text(udev_device_get_driver(device)),
                        devicePath: text(udev_device_get_devpath(device)) ?? name)
    }
}
