/// A logical device's full name, `container/device`: the container (a process's namespace,
/// or `kernel` for the kernel emulation's one shared namespace) and the device inside it.
public struct LogicalDeviceName: Hashable, Sendable, CustomStringConvertible {
    /// The container providing the device.
    public let container: String
    /// The device's name inside its container.
    public let device: String

    /// The longest container or device name.
    public static let maximumLength = 48
    /// The kernel emulation's container: one namespace for every kernel-mode provider.
    public static let kernelContainer = "kernel"

    /// Validates both parts: 1–48 characters from `a-z A-Z 0-9 . _ -`, not starting with `.`.
    public init(container: String, device: String) throws(LogicalDeviceError) {
        try Self.validate(container, what: "container")
        try Self.validate(device, what: "device")
        self.container = container
        self.device = device
    }

    /// Parses `container/device`, or a bare `device` in `defaultContainer`.
    public init(parsing text: String, defaultContainer: String) throws(LogicalDeviceError) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        switch parts.count {
        case 1: try self.init(container: defaultContainer, device: text)
        case 2: try self.init(container: String(parts[0]), device: String(parts[1]))
        default:
            throw LogicalDeviceError(.invalidName, "'\(text)' is not a device name: use container/device, e.g. kernel/net0")
        }
    }

    /// `container/device`.
    public var description: String { "\(container)/\(device)" }

    /// Checks one part of a name.
    public static func validate(_ name: String, what: String) throws(LogicalDeviceError) {
        let allowed = name.utf8.allSatisfy { byte in
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                || byte == 0x2E || byte == 0x5F || byte == 0x2D
        }
        guard !name.isEmpty, name.utf8.count <= maximumLength, allowed, name.first != "." else {
            throw LogicalDeviceError(
                .invalidName,
                "'\(name)' is not a valid \(what) name: use 1-\(maximumLength) characters from a-z A-Z 0-9 . _ - (not starting with .)")
        }
    }
}
