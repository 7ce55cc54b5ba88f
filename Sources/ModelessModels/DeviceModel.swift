import ModelessBus
import ModelessDevice

/// A device implemented in software: its BARs' registers with their side effects, its
/// configuration space, and the interrupts it offers. ``ModeledDevice`` turns a model into a
/// `DeviceAccess` that a driver uses exactly as it uses a VFIO or UIO device.
///
/// A model reaches the outside world only through its ``ModelContext``: raising and lowering
/// interrupts, reading and writing DMA memory by device address, and scheduling work for later
/// (a DMA engine's or a computation's completion).
public protocol DeviceModel: AnyObject, Sendable {
    /// BAR sizes by index.
    var barSizes: [Int: Int] { get }
    /// Configuration space as it is at power-on (256 bytes).
    var initialConfigSpace: [UInt8] { get }
    /// The vectors offered for each interrupt kind.
    var vectorCounts: [InterruptKind: Int] { get }
    /// Called once, before any access, with the model's link to the world.
    func connect(_ context: ModelContext)
    /// A register read; `offset` is inside the BAR, `width` 1, 2, 4 or 8.
    func read(bar: Int, offset: Int, width: Int) -> UInt64
    /// A register write of the low `width` bytes of `value`; `offset` is inside the BAR.
    func write(bar: Int, offset: Int, width: Int, value: UInt64)
}

/// Faults a test can inject into a modeled device.
public struct ModelFaults: Sendable, Equatable {
    /// The device is gone: reads return all ones, writes are dropped, no interrupts arrive.
    public var surpriseRemoved = false
    /// The interrupt line stays asserted: INTx fires again after every acknowledge, and MSI
    /// vectors are raised again each time they are acknowledged.
    public var stuckInterrupt = false

    /// Faults as given; none by default.
    public init(surpriseRemoved: Bool = false, stuckInterrupt: Bool = false) {
        self.surpriseRemoved = surpriseRemoved
        self.stuckInterrupt = stuckInterrupt
    }
}
