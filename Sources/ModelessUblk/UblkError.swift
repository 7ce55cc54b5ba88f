/// Why exporting a device through ublk failed. Each message says what was wrong and what to do.
public struct UblkError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What went wrong, for callers that choose an exit code or a retry.
    public enum Kind: Sendable, Equatable {
        /// `/dev/ublk-control` is missing: the kernel's ublk driver is not loaded (or not built).
        case driverUnavailable
        /// The caller may not use the ublk control device (ublk needs CAP_SYS_ADMIN here).
        case notPermitted
        /// The logical device is already exported by another process.
        case alreadyExported
        /// The logical device does not exist, or its geometry cannot be served.
        case noSuchDevice
        /// An argument is out of the range the kernel accepts.
        case invalidArgument
        /// The kernel refused a command.
        case kernelRefused
        /// A system call failed.
        case system
    }

    /// What went wrong, for choosing an exit code or a retry.
    public var kind: Kind
    /// What was wrong and what to do, naming the device, value or command.
    public var message: String

    /// An error of `kind` explained by `message`.
    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    /// The message alone: it already says what failed.
    public var description: String { message }
}
