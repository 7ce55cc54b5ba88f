import ModelessBus
import ModelessSystem

/// The interrupt mechanisms a PCI function can use.
public enum InterruptKind: String, Sendable, CaseIterable, CustomStringConvertible {
    /// The legacy level-triggered line; masked after each interrupt until acknowledged.
    case intx
    /// Message-signalled interrupts.
    case msi
    /// Message-signalled interrupts with a per-vector table.
    case msix

    /// `intx`, `msi` or `msix`, as the command line spells it.
    public var description: String { rawValue }
}

/// One enabled interrupt vector, delivered on a file descriptor that becomes readable when
/// the device interrupts (a VFIO eventfd, or `/dev/uioN`).
///
/// The runtime's wait thread polls ``fd`` (or blocks in ``wait()``), runs the handler, then
/// calls ``acknowledge()``, which re-enables INTx; for MSI and MSI-X it does nothing.
public final class InterruptVector: @unchecked Sendable {
    /// How the vector's interrupts are signalled.
    public let kind: InterruptKind
    /// The vector number within its kind (0 for INTx).
    public let index: Int
    /// The descriptor to poll or read.
    public let fd: Int32
    /// Whether ``fd`` is an eventfd (VFIO, device models), which a waiter can also be woken
    /// through by writing to it; `/dev/uioN` is not.
    public let deliversOnEventfd: Bool
    /// The device whose interrupt this is.
    public let device: PCIAddress
    private let waitOperation: () throws(DeviceError) -> UInt64
    private let acknowledgeOperation: () throws(DeviceError) -> Void
    private let triggerOperation: (() throws(DeviceError) -> Void)?

    /// A vector delivered on `fd`, with the backend's operations. For backends outside this
    /// module (device models).
    public init(kind: InterruptKind, index: Int, fd: Int32, deliversOnEventfd: Bool = false, device: PCIAddress,
         wait: @escaping () throws(DeviceError) -> UInt64,
         acknowledge: @escaping () throws(DeviceError) -> Void,
         trigger: (() throws(DeviceError) -> Void)?) {
        self.kind = kind
        self.index = index
        self.fd = fd
        self.deliversOnEventfd = deliversOnEventfd
        self.device = device
        self.waitOperation = wait
        self.acknowledgeOperation = acknowledge
        self.triggerOperation = trigger
    }

    /// Blocks until the vector fires; returns how many interrupts arrived since the last wait
    /// (several are coalesced into one wake-up).
    public func wait() throws(DeviceError) -> UInt64 { try waitOperation() }

    /// Re-enables the vector after its interrupt was handled (INTx only; a no-op otherwise).
    public func acknowledge() throws(DeviceError) { try acknowledgeOperation() }

    /// Whether ``trigger()`` can fire the vector from software.
    public var canTrigger: Bool { triggerOperation != nil }

    /// Fires the vector from software, as if the device had (VFIO's loopback trigger).
    public func trigger() throws(DeviceError) {
        guard let triggerOperation else {
            throw DeviceError(.unsupported, device, "\(kind) vector \(index) cannot be triggered from software on this backend")
        }
        try triggerOperation()
    }
}
