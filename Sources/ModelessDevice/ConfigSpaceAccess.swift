import ModelessBus
import ModelessSystem

/// Reads and writes a function's configuration space, bounds-checked, with the fields a
/// driver changes: the command register (memory decoding, bus mastering, INTx disable) and
/// the capability list.
public final class ConfigSpaceAccess: @unchecked Sendable {
    /// Command register bits (PCI Local Bus Specification 6.2.2).
    public struct Command: OptionSet, Sendable {
        /// The register's bits.
        public let rawValue: UInt16
        /// The bits `rawValue`.
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        /// Bit 0: the device answers I/O-space accesses.
        public static let ioSpace = Command(rawValue: 1 << 0)
        /// Bit 1: the device answers memory-space accesses (its memory BARs).
        public static let memorySpace = Command(rawValue: 1 << 1)
        /// Bit 2: the device may master the bus (DMA, and MSI writes).
        public static let busMaster = Command(rawValue: 1 << 2)
        /// Bit 10: the device must not assert INTx.
        public static let interruptDisable = Command(rawValue: 1 << 10)
    }

    /// The device whose configuration space this is.
    public let device: PCIAddress
    /// 256 for conventional PCI, 4096 for PCI Express.
    public let size: Int
    private let file: any ConfigSpaceBacking

    init(device: PCIAddress, size: Int, file: any ConfigSpaceBacking) {
        self.device = device
        self.size = size
        self.file = file
    }

    /// Configuration space held by a device model (or any other software backing).
    public static func emulated(device: PCIAddress, size: Int, backing: any ConfigSpaceBacking) -> ConfigSpaceAccess {
        ConfigSpaceAccess(device: device, size: size, file: backing)
    }

    /// Reads the byte at `offset`.
    public func read8(at offset: Int) throws(DeviceError) -> UInt8 { UInt8(truncatingIfNeeded: try read(offset, 1)) }
    /// Reads the 16-bit little-endian value at `offset` (2-byte aligned).
    public func read16(at offset: Int) throws(DeviceError) -> UInt16 { UInt16(truncatingIfNeeded: try read(offset, 2)) }
    /// Reads the 32-bit little-endian value at `offset` (4-byte aligned).
    public func read32(at offset: Int) throws(DeviceError) -> UInt32 { UInt32(truncatingIfNeeded: try read(offset, 4)) }
    /// Writes the byte `value` at `offset`.
    public func write8(_ value: UInt8, at offset: Int) throws(DeviceError) { try write(offset, 1, UInt64(value)) }
    /// Writes the 16-bit `value` at `offset` (2-byte aligned).
    public func write16(_ value: UInt16, at offset: Int) throws(DeviceError) { try write(offset, 2, UInt64(value)) }
    /// Writes the 32-bit `value` at `offset` (4-byte aligned).
    public func write32(_ value: UInt32, at offset: Int) throws(DeviceError) { try write(offset, 4, UInt64(value)) }

    /// The command register.
    public func command() throws(DeviceError) -> Command {
        Command(rawValue: try read16(at: PCIConfigSpace.Offset.command))
    }

    /// Sets or clears command register bits, leaving the others as they are.
    public func setCommand(_ bits: Command, _ enabled: Bool) throws(DeviceError) {
        var value = try command()
        if enabled { value.formUnion(bits) } else { value.subtract(bits) }
        try write16(value.rawValue, at: PCIConfigSpace.Offset.command)
    }

    /// Lets the device master the bus (DMA and MSI need it).
    public func setBusMastering(_ enabled: Bool) throws(DeviceError) {
        try setCommand(.busMaster, enabled)
    }

    /// Masks (true) or unmasks (false) the legacy INTx interrupt at the device.
    public func setINTxDisabled(_ disabled: Bool) throws(DeviceError) {
        try setCommand(.interruptDisable, disabled)
    }

    /// All of configuration space, parsed.
    public func snapshot() throws(DeviceError) -> PCIConfigSpace {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(size)
        for offset in stride(from: 0, to: size, by: 4) {
            let value = try read32(at: offset)
            bytes += [0, 8, 16, 24].map { UInt8(truncatingIfNeeded: value >> $0) }
        }
        return PCIConfigSpace(bytes: bytes)
    }

    private func read(_ offset: Int, _ width: Int) throws(DeviceError) -> UInt64 {
        try check(offset, width)
        return try file.read(at: offset, width: width, device: device)
    }

    private func write(_ offset: Int, _ width: Int, _ value: UInt64) throws(DeviceError) {
        try check(offset, width)
        try file.write(value, at: offset, width: width, device: device)
    }

    private func check(_ offset: Int, _ width: Int) throws(DeviceError) {
        guard offset >= 0, offset <= size - width, offset % width == 0 else {
            throw DeviceError(.outOfRange, device,
                              "config space: \(width * 8)-bit access at 0x\(String(offset, radix: 16)) is outside its \(size) bytes or misaligned")
        }
    }
}

/// Where configuration space accesses go: a file (VFIO region, sysfs `config`) or a model.
public protocol ConfigSpaceBacking: AnyObject, Sendable {
    /// Reads `width` (1, 2 or 4) bytes at `offset`, little-endian.
    func read(at offset: Int, width: Int, device: PCIAddress) throws(DeviceError) -> UInt64
    /// Writes the low `width` (1, 2 or 4) bytes of `value` at `offset`, little-endian.
    func write(_ value: UInt64, at offset: Int, width: Int, device: PCIAddress) throws(DeviceError)
}

extension RegionFile: ConfigSpaceBacking {}
