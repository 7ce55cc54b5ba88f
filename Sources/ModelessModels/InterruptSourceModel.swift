import ModelessDevice

/// A device that only interrupts: `vectors` MSI vectors and an INTx line, raised from software
/// with `InterruptVector.trigger()`. For exercising and measuring the runtime's interrupt path.
public final class InterruptSourceModel: DeviceModel, @unchecked Sendable {
    /// BAR 0: 4 KiB that read as zero.
    public let barSizes = [0: 4096]
    /// The MSI vectors asked for, and INTx.
    public let vectorCounts: [InterruptKind: Int]
    /// Zeroed configuration space but for the interrupt pin.
    public var initialConfigSpace: [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 256)
        bytes[0] = 0xf4; bytes[1] = 0x1a; bytes[4] = 0x06  // memory decoding and bus mastering on
        bytes[0x3D] = 1
        return bytes
    }

    /// A source of `vectors` MSI vectors and an INTx line.
    public init(vectors: Int = 1) { vectorCounts = [.msi: vectors, .intx: 1] }
    /// Nothing to keep: the vectors are raised from outside.
    public func connect(_ context: ModelContext) {}
    /// Every register reads zero.
    public func read(bar: Int, offset: Int, width: Int) -> UInt64 { 0 }
    /// Writes are ignored.
    public func write(bar: Int, offset: Int, width: Int, value: UInt64) {}
}
