import CModelessShim

#if canImport(Glibc)
import Glibc
#endif

/// A TAP interface of the Linux kernel (TUN/TAP in Ethernet mode, `IFF_TAP | IFF_NO_PI`):
/// every frame the kernel's network stack sends on the interface is read from ``fd``, and
/// every frame written to it is received by the stack as if it had come off a wire.
///
/// ``open(_:persistent:cloneDevice:)`` creates the interface, or attaches to an existing
/// persistent one of that name. Before anything is created the name is checked (as the
/// kernel's `dev_valid_name` does) and an interface already holding it is inspected in sysfs,
/// so that a NIC, a bridge or a TUN interface of that name is refused with ``TapError`` and
/// left as it was.
///
/// Lifetime: a non-persistent TAP disappears when its descriptor is closed, however the
/// process ends. A persistent one (`IFF_PERSIST`) stays, with its addresses and routes, while
/// no process holds it (the kernel drops what the stack sends meanwhile and reports the
/// carrier down), so that a restarted process attaches to it again and connections over it
/// survive. ``remove()`` deletes it; ``close()`` leaves it as it is.
///
/// The descriptor is non-blocking: ``read(into:)`` returns nil when no frame is waiting, so a
/// caller waits for ``fd`` with epoll.
public final class TapInterface: @unchecked Sendable {
    /// The interface's name.
    public let name: String
    /// The TAP's queue: read a frame, write a frame (non-blocking, close-on-exec).
    public let fd: Int32
    /// Whether this call created the interface (it did not exist before).
    public let created: Bool
    /// Whether the interface outlives its descriptor (`IFF_PERSIST`).
    public private(set) var persistent: Bool
    private var isOpen = true

    /// The TUN/TAP clone device.
    public static let defaultCloneDevice = "/dev/net/tun"
    /// The longest interface name (`IFNAMSIZ` - 1).
    public static let maximumNameLength = 15

    private init(name: String, fd: Int32, created: Bool, persistent: Bool) {
        self.name = name
        self.fd = fd
        self.created = created
        self.persistent = persistent
    }

    /// Creates TAP `name`, or attaches to an existing persistent one, and makes it persistent
    /// when `persistent` is set (an existing persistent TAP stays persistent either way).
    /// Throws ``TapError`` naming what was wrong: an invalid name, a missing clone device, no
    /// permission, an interface of another kind or a TUN interface of that name, a TAP that
    /// another process holds; in every case nothing is created.
    public static func open(_ name: String, persistent: Bool, cloneDevice: String = defaultCloneDevice) throws(TapError) -> TapInterface {
        try validate(name)
        let existing = ExistingInterface(name)
        switch existing {
        case .none, .tap: break
        case .tun: throw .isTun(name)
        case .other(let kind): throw .notTap(name, kind: kind)
        }
        let fd = Glibc.open(cloneDevice, O_RDWR | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else {
            let error = Errno.current
            switch error {
            case .noSuchFileOrDirectory, .noSuchAddressOrDevice, .operationNotSupportedByDevice: throw .noCloneDevice(cloneDevice)
            case .permissionDenied, .notPermitted: throw .notPermitted(name, operation: "opening \(cloneDevice) for")
            default: throw .system(SystemError("open", cloneDevice, errno: error))
            }
        }
        var request = Self.request(name)
        request.ifr_ifru.ifru_flags = Int16(bitPattern: modeless_IFF_TAP | modeless_IFF_NO_PI)
        let attached = withUnsafeMutableBytes(of: &request) { modeless_ioctl_ptr(fd, modeless_TUNSETIFF, $0.baseAddress) }
        if attached != 0 {
            let error = Errno.current
            _ = Glibc.close(fd)
            switch error {
            case .notPermitted, .permissionDenied: throw .notPermitted(name, operation: existing == .none ? "creating" : "attaching to")
            case .resourceBusy: throw .busy(name)
            case .invalidArgument:
                // Raced with another creator, or flags that do not match the existing device.
                switch ExistingInterface(name) {
                case .tun: throw .isTun(name)
                case .other(let kind): throw .notTap(name, kind: kind)
                default: throw .system(SystemError("TUNSETIFF", name, errno: error))
                }
            default: throw .system(SystemError("TUNSETIFF", name, errno: error))
            }
        }
        var wasPersistent = false
        if case .tap(let flags) = existing { wasPersistent = flags & UInt32(modeless_IFF_PERSIST) != 0 }
        let tap = TapInterface(name: name, fd: fd, created: existing == .none, persistent: wasPersistent)
        if persistent && !wasPersistent {
            do { try tap.setPersistent(true) } catch {
                tap.remove()
                throw error
            }
        }
        return tap
    }

    /// Checks `name` as the kernel's `dev_valid_name` does, before anything is created.
    public static func validate(_ name: String) throws(TapError) {
        let bytes = Array(name.utf8)
        if bytes.isEmpty { throw .invalidName(name, reason: "it is empty") }
        if bytes.count > maximumNameLength { throw .invalidName(name, reason: "it is \(bytes.count) bytes long") }
        if name == "." || name == ".." { throw .invalidName(name, reason: "it names a directory") }
        if let bad = bytes.first(where: { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: ":") || $0 <= 0x20 || $0 == 0x7F }) {
            throw .invalidName(name, reason: bad <= 0x20 || bad == 0x7F ? "it contains white space or a control character" : "it contains '\(Character(UnicodeScalar(bad)))'")
        }
        if name.contains("%") { throw .invalidName(name, reason: "'%' asks the kernel to choose a number, but the name must be fixed") }
    }

    /// Sets or clears `IFF_PERSIST` (`TUNSETPERSIST`).
    public func setPersistent(_ value: Bool) throws(TapError) {
        if modeless_ioctl_int(fd, modeless_TUNSETPERSIST, value ? 1 : 0) != 0 {
            let error = Errno.current
            if error == .notPermitted { throw .notPermitted(name, operation: "making persistent") }
            throw .system(SystemError("TUNSETPERSIST", name, errno: error))
        }
        persistent = value
    }

    /// Reads one frame into `buffer`; returns its length, or nil when none is waiting.
    /// A frame longer than the buffer is cut (the rest is lost), as the kernel does.
    @inline(__always)
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> Int? {
        while true {
            let count = Glibc.read(fd, buffer.baseAddress, buffer.count)
            if count >= 0 { return count }
            let error = Errno.current
            if error == .interrupted { continue }
            if error == .wouldBlock { return nil }
            throw SystemError("read", "TAP \(name)", errno: error)
        }
    }

    /// Hands one frame to the kernel's stack. Returns false when the kernel did not take it
    /// (the interface is down, or out of memory): a frame lost, as on a wire.
    @inline(__always)
    public func write(_ frame: UnsafeRawBufferPointer) -> Bool {
        while true {
            let count = Glibc.write(fd, frame.baseAddress, frame.count)
            if count == frame.count { return true }
            if count < 0 && Errno.current == .interrupted { continue }
            return false
        }
    }

    /// Closes the descriptor: a non-persistent TAP is deleted with it, a persistent one
    /// stays for the next process. Idempotent.
    public func close() {
        guard isOpen else { return }
        isOpen = false
        _ = Glibc.close(fd)
    }

    /// Deletes the interface: clears `IFF_PERSIST` (if set) and closes the descriptor.
    public func remove() {
        guard isOpen else { return }
        if persistent { _ = modeless_ioctl_int(fd, modeless_TUNSETPERSIST, 0) }
        persistent = false
        close()
    }

    /// Undoes ``open(_:persistent:cloneDevice:)`` after a later step failed: an interface it
    /// created is deleted, one that existed before is left as it was.
    public func abandon() {
        if created { remove() } else { close() }
    }

    deinit { close() }

    /// An `ifreq` naming the interface.
    static func request(_ name: String) -> ifreq {
        var request = ifreq()
        withUnsafeMutableBytes(of: &request.ifr_ifrn.ifrn_name) { field in
            for (index, byte) in name.utf8.prefix(maximumNameLength).enumerated() { field[index] = byte }
        }
        return request
    }
}

/// What already holds an interface name, read from `/sys/class/net/NAME`.
enum ExistingInterface: Equatable {
    case none
    /// A TUN/TAP device in TAP mode, with its `tun_flags`.
    case tap(flags: UInt32)
    case tun
    /// Any other kind, described (`loopback`, `bridge`, `Ethernet`…).
    case other(String)

    init(_ name: String) {
        let directory = "/sys/class/net/\(name)"
        guard FileAccess.exists(directory) else { self = .none; return }
        if let text = FileAccess.readTextIfPresent("\(directory)/tun_flags"),
           let flags = UInt32(text.trimmingBlanks().replacingPrefix("0x"), radix: 16) {
            self = flags & UInt32(modeless_IFF_TAP) != 0 ? .tap(flags: flags) : .tun
            return
        }
        let devtype = FileAccess.readTextIfPresent("\(directory)/uevent")?
            .split(separator: "\n").first { $0.hasPrefix("DEVTYPE=") }.map { String($0.dropFirst("DEVTYPE=".count)) }
        if let devtype { self = .other(devtype); return }
        let type = FileAccess.readTextIfPresent("\(directory)/type")?.trimmingBlanks()
        if type == "772" { self = .other("loopback"); return }
        self = .other(FileAccess.exists("\(directory)/device") ? "hardware network" : "network")
    }
}

extension String {
    fileprivate func replacingPrefix(_ prefix: String) -> Substring {
        hasPrefix(prefix) ? dropFirst(prefix.count) : Substring(self)
    }
}
