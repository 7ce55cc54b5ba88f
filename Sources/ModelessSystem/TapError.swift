/// Why a TAP interface could not be opened or set up, each case saying what was wrong and
/// what to do. Nothing is left behind when one is thrown: an interface this process created
/// is deleted again before the error reaches the caller.
public enum TapError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The name is not one the kernel accepts for an interface.
    case invalidName(String, reason: String)
    /// The TUN/TAP clone device is missing (the `tun` module is not loaded).
    case noCloneDevice(String)
    /// Creating or attaching needs `CAP_NET_ADMIN` (or read-write access to the clone device).
    case notPermitted(String, operation: String)
    /// An interface of another kind (a NIC, a bridge, loopback…) already has the name.
    case notTap(String, kind: String)
    /// A TUN (layer 3) interface already has the name: a TAP carries Ethernet frames.
    case isTun(String)
    /// The TAP exists and another process is attached to it.
    case busy(String)
    /// Any other failed system call.
    case system(SystemError)

    /// What was wrong and what to do, naming the interface (for example "load the TUN/TAP driver
    /// with `modprobe tun`").
    public var description: String {
        switch self {
        case .invalidName(let name, let reason):
            "\"\(name)\" is not a valid interface name: \(reason); a name is 1 to 15 characters without '/', ':' or white space, and not \".\" or \"..\""
        case .noCloneDevice(let path):
            "there is no \(path): load the TUN/TAP driver with `modprobe tun` (a kernel built with CONFIG_TUN)"
        case .notPermitted(let name, let operation):
            "\(operation) TAP \(name) is not permitted: it needs CAP_NET_ADMIN (run as root)"
        case .notTap(let name, let kind):
            "\(name) is an existing \(kind) interface, not a TAP: choose another name (`ip link show \(name)`)"
        case .isTun(let name):
            "\(name) is an existing TUN (IP-level) interface, not a TAP (Ethernet): choose another name or delete it with `ip tuntap del dev \(name) mode tun`"
        case .busy(let name):
            "TAP \(name) is already attached by another process (`ip -d link show \(name)`; a TAP takes one process at a time)"
        case .system(let error):
            "\(error)"
        }
    }
}
