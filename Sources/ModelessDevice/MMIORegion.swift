import CModelessShim
import ModelessBus

/// A device's register window (a BAR), with bounds-checked, aligned, volatile accesses of
/// exactly 8, 16, 32 or 64 bits.
///
/// An offset outside the region, or not aligned to the access width, throws
/// ``DeviceError`` (`.outOfRange`) and touches nothing. How the window is reached stays
/// inside the backend: mapped device memory, an I/O-port region read through a file, or
/// registers implemented in software (``RegisterFile``).
public struct MMIORegion: @unchecked Sendable {
    /// How accesses reach the device.
    enum Backing {
        /// Mapped memory, valid while `lifetime` is open (the device closes it before unmapping).
        case mapped(UnsafeMutableRawPointer, lifetime: MappingLifetime)
        /// A file accessed with pread/pwrite at `base` (VFIO I/O-port regions, UIO I/O BARs).
        case file(RegionFile)
        /// Software registers.
        case registers(any RegisterFile)
    }

    /// BAR number.
    public let index: Int
    /// Size in bytes.
    public let size: Int
    /// The device the region belongs to.
    public let device: PCIAddress
    let backing: Backing
    /// The mapping and its lifetime, apart from `backing`, so that the mapped fast path reads
    /// them without copying the enum (which would retain and release its payload per access).
    private let mappedBase: UnsafeMutableRawPointer?
    private let mappedLifetime: MappingLifetime?
    /// Failed non-throwing accesses (``load(_:function:)`` and ``store(_:to:function:)``), shared by every copy.
    public let health = RegionHealth()

    init(index: Int, size: Int, device: PCIAddress, backing: Backing) {
        self.index = index
        self.size = size
        self.device = device
        self.backing = backing
        if case .mapped(let base, let lifetime) = backing {
            mappedBase = base
            mappedLifetime = lifetime
        } else {
            mappedBase = nil
            mappedLifetime = nil
        }
    }

    /// A region whose registers are implemented by `registers` (device models, tests).
    public static func emulated(index: Int, size: Int, device: PCIAddress, registers: any RegisterFile) -> MMIORegion {
        MMIORegion(index: index, size: size, device: device, backing: .registers(registers))
    }

    /// The software registers behind an emulated region, `nil` for other regions.
    public var registers: (any RegisterFile)? {
        if case .registers(let registers) = backing { return registers }
        return nil
    }

    /// Whether this region is mapped device memory (not I/O ports or software registers).
    public var isMemoryMapped: Bool {
        if case .mapped = backing { return true }
        return false
    }

    /// Reads the byte at `offset`; throws if it is outside the region or the region was released.
    public func read8(at offset: Int) throws(DeviceError) -> UInt8 { UInt8(truncatingIfNeeded: try read(offset, 1)) }
    /// Reads the 16-bit register at `offset` (2-byte aligned).
    public func read16(at offset: Int) throws(DeviceError) -> UInt16 { UInt16(truncatingIfNeeded: try read(offset, 2)) }
    /// Reads the 32-bit register at `offset` (4-byte aligned).
    public func read32(at offset: Int) throws(DeviceError) -> UInt32 { UInt32(truncatingIfNeeded: try read(offset, 4)) }
    /// Reads the 64-bit register at `offset` (8-byte aligned).
    public func read64(at offset: Int) throws(DeviceError) -> UInt64 { try read(offset, 8) }

    /// Writes the byte `value` at `offset`; throws if it is outside the region or the region was released.
    public func write8(_ value: UInt8, at offset: Int) throws(DeviceError) { try write(offset, 1, UInt64(value)) }
    /// Writes the 16-bit `value` to the register at `offset` (2-byte aligned).
    public func write16(_ value: UInt16, at offset: Int) throws(DeviceError) { try write(offset, 2, UInt64(value)) }
    /// Writes the 32-bit `value` to the register at `offset` (4-byte aligned).
    public func write32(_ value: UInt32, at offset: Int) throws(DeviceError) { try write(offset, 4, UInt64(value)) }
    /// Writes the 64-bit `value` to the register at `offset` (8-byte aligned).
    public func write64(_ value: UInt64, at offset: Int) throws(DeviceError) { try write(offset, 8, value) }

    private func check(_ offset: Int, _ width: Int) throws(DeviceError) {
        guard offset >= 0, offset <= size - width else {
            throw DeviceError(.outOfRange, device,
                              "BAR\(index): \(width * 8)-bit access at 0x\(String(offset, radix: 16)) is outside the region's \(size) bytes")
        }
        guard offset % width == 0 else {
            throw DeviceError(.outOfRange, device,
                              "BAR\(index): \(width * 8)-bit access at 0x\(String(offset, radix: 16)) is not \(width)-byte aligned")
        }
    }

    private func read(_ offset: Int, _ width: Int) throws(DeviceError) -> UInt64 {
        try check(offset, width)
        if let base = mappedBase, let lifetime = mappedLifetime {
            try lifetime.check(device, index)
            let address = base + offset
            switch width {
            case 1: return UInt64(modeless_mmio_read8(address))
            case 2: return UInt64(modeless_mmio_read16(address))
            case 4: return UInt64(modeless_mmio_read32(address))
            default: return modeless_mmio_read64(address)
            }
        }
        try checkNotReleased()
        return try withUnmappedBacking { backing throws(DeviceError) in
            switch backing {
            case .file(let file): try file.read(at: offset, width: width, device: device)
            case .registers(let registers): registers.read(at: offset, width: width)
            case .mapped: 0  // Handled above.
            }
        }
    }

    private func write(_ offset: Int, _ width: Int, _ value: UInt64) throws(DeviceError) {
        try check(offset, width)
        if let base = mappedBase, let lifetime = mappedLifetime {
            try lifetime.check(device, index)
            let address = base + offset
            switch width {
            case 1: modeless_mmio_write8(address, UInt8(truncatingIfNeeded: value))
            case 2: modeless_mmio_write16(address, UInt16(truncatingIfNeeded: value))
            case 4: modeless_mmio_write32(address, UInt32(truncatingIfNeeded: value))
            default: modeless_mmio_write64(address, value)
            }
            return
        }
        try checkNotReleased()
        try withUnmappedBacking { backing throws(DeviceError) in
            switch backing {
            case .file(let file): try file.write(value, at: offset, width: width, device: device)
            case .registers(let registers): registers.write(at: offset, width: width, value: value)
            case .mapped: break  // Handled above.
            }
        }
    }
}

extension MMIORegion {
    /// The non-throwing access behind ``load(_:)``: all-ones, counted in ``health``, when the
    /// backend cannot reach the device.
    @usableFromInline
    func loadRaw(_ offset: Int, _ width: Int, _ function: StaticString) -> UInt64 {
        precondition(offset >= 0 && offset <= size - width && offset % width == 0,
                     "a register access outside BAR\(index) or misaligned (a driver's register table is wrong)")
        do {
            return try read(offset, width)
        } catch {
            health.record(error.kind == .closed ? .accessAfterRelease(error.message) : .backend(error.message), at: function)
            return width == 8 ? UInt64.max : (1 << (UInt64(width) * 8)) - 1
        }
    }

    /// The non-throwing access behind ``store(_:to:)``: dropped, counted in ``health``, when
    /// the backend cannot reach the device.
    @usableFromInline
    func storeRaw(_ offset: Int, _ width: Int, _ value: UInt64, _ function: StaticString) {
        precondition(offset >= 0 && offset <= size - width && offset % width == 0,
                     "a register access outside BAR\(index) or misaligned (a driver's register table is wrong)")
        do {
            try write(offset, width, value)
        } catch {
            health.record(error.kind == .closed ? .accessAfterRelease(error.message) : .backend(error.message), at: function)
        }
    }

    /// Refuses an access to a region marked released (``RegionHealth/markReleased(_:)``).
    private func checkNotReleased() throws(DeviceError) {
        if let reason = health.releasedReason { throw DeviceError(.closed, device, "BAR\(index) was released: \(reason)") }
    }

    /// Lends the backing to `body` without copying it.
    @inline(__always)
    fileprivate func withUnmappedBacking<Result>(_ body: (borrowing Backing) throws(DeviceError) -> Result) throws(DeviceError) -> Result {
        try body(backing)
    }
}

/// Whether a device's mappings are still valid: closing the device ends them before
/// unmapping, so a region kept past `close()` reports ``DeviceError/Kind/closed`` instead of
/// touching unmapped memory.
final class MappingLifetime: @unchecked Sendable {
    private(set) var isOpen = true

    func end() { isOpen = false }

    @inline(__always)
    func check(_ device: PCIAddress, _ index: Int) throws(DeviceError) {
        if !isOpen { throw DeviceError(.closed, device, "BAR\(index) was unmapped when the device was closed") }
    }
}
