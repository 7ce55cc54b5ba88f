import ModelessBus
import ModelessSystem

/// Why an operation on an opened device failed. Every case names the device and says what
/// to do where something can be done.
public struct DeviceError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What kind of failure.
    public enum Kind: String, Sendable, Equatable {
        /// The device is not bound to the driver the backend needs.
        case notBound
        /// A register offset or width outside a region, or misaligned.
        case outOfRange
        /// The region, interrupt type or operation is not offered by this device or backend.
        case unsupported
        /// The VFIO group has members on host drivers.
        case groupNotViable
        /// DMA over UIO was asked for without opting in (UIO gives no DMA isolation).
        case unisolatedDMANotAllowed
        /// No device address is left below the device's DMA mask.
        case outOfDeviceAddresses
        /// The device was closed.
        case closed
        /// A system call failed; ``systemError`` has the call and errno.
        case system
    }

    /// What kind of failure.
    public var kind: Kind
    /// The device it concerns.
    public var device: PCIAddress
    /// What happened and, where something can be done, what to do.
    public var message: String
    /// The system call and errno, for ``Kind/system``.
    public var systemError: SystemError?

    /// An error of `kind` about `device`, saying `message`.
    public init(_ kind: Kind, _ device: PCIAddress, _ message: String, systemError: SystemError? = nil) {
        self.kind = kind
        self.device = device
        self.message = message
        self.systemError = systemError
    }

    /// Wraps a failed system call.
    public init(_ error: SystemError, _ device: PCIAddress) {
        self.init(.system, device, "\(error)", systemError: error)
    }

    /// `ADDRESS: message`.
    public var description: String { "\(device): \(message)" }
}
