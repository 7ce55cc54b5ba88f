import CModelessShim
import ModelessBus
import Synchronization

/// Memory the device can reach by DMA, with the address the device uses for it.
///
/// Accesses are bounds-checked and volatile (the device may write the memory at any time).
/// ``free()`` removes the device's access (the IOMMU mapping) and releases the memory;
/// so does `deinit`, and so does closing the device.
public final class DMABuffer: @unchecked Sendable {
    /// Size in bytes.
    public let size: Int
    /// The address the device uses: an IO virtual address under VFIO, a physical one under UIO.
    public let deviceAddress: UInt64
    /// The device the buffer is mapped for.
    public let device: PCIAddress
    @usableFromInline let base: UnsafeMutableRawPointer
    private var release: ((DMABuffer) -> Void)?
    /// Whether the buffer may still be accessed: false once freed or invalidated. Read by
    /// every access, inlined into the drivers' datapaths, so without a dynamic exclusivity
    /// check; written only by ``free()`` and when the device closes.
    @usableFromInline @exclusivity(unchecked) var isLive = true
    /// Accesses refused because the buffer was freed (or its device closed), for a runtime's
    /// verifier (``RegionHealth/addObserver(_:)``). A view (``slice(at:size:)``) shares its
    /// parent's.
    public let health: RegionHealth
    /// The buffer a view was carved from, kept alive as long as the view is.
    private let parent: DMABuffer?
    /// The views carved from this buffer, made unusable when it is freed or invalidated.
    private let views = Mutex<[WeakView]>([])

    private struct WeakView { weak var buffer: DMABuffer? }

    /// Memory at `base` that the device reaches at `deviceAddress`; `release` frees it. For
    /// backends outside this module (device models).
    public init(size: Int, deviceAddress: UInt64, device: PCIAddress, base: UnsafeMutableRawPointer,
                release: @escaping (DMABuffer) -> Void) {
        self.size = size
        self.deviceAddress = deviceAddress
        self.device = device
        self.base = base
        self.release = release
        health = RegionHealth()
        parent = nil
    }

    /// A view of `size` bytes at `offset` of `parent`.
    private init(viewOf parent: DMABuffer, offset: Int, size: Int) {
        self.size = size
        deviceAddress = parent.deviceAddress + UInt64(offset)
        device = parent.device
        base = parent.base + offset
        release = { _ in }
        health = parent.health
        self.parent = parent
    }

    deinit { free() }

    /// A view of `size` bytes at `offset` of this buffer (device address + offset), for carving
    /// one allocation into parts. Freeing a view does nothing to the memory (only the view
    /// refuses accesses from then on); freeing (or invalidating) the parent makes every view
    /// refuse accesses too, as a freed buffer does. A view keeps its parent alive. Throws
    /// `.outOfRange` when the range is not inside the buffer, `.closed` when it was freed.
    public func slice(at offset: Int, size: Int) throws(DeviceError) -> DMABuffer {
        guard offset >= 0, size > 0, offset <= self.size - size else {
            throw DeviceError(.outOfRange, device, "DMA buffer: a slice of \(size) bytes at \(offset) is not inside its \(self.size) bytes")
        }
        let view = DMABuffer(viewOf: self, offset: offset, size: size)
        // Registered before the liveness check, so that a free racing with this either sees
        // the view or is seen by the check.
        views.withLock { views in
            views.removeAll { $0.buffer == nil }
            views.append(WeakView(buffer: view))
        }
        guard isLive else {
            view.invalidate()
            throw DeviceError(.closed, device, "DMA buffer at 0x\(String(deviceAddress, radix: 16)) was freed: no slice of it can be made")
        }
        return view
    }

    /// Whether the buffer has been freed (directly or by closing its device).
    public var isFreed: Bool { !isLive }

    /// Unmaps the buffer from the device and releases its memory. Idempotent.
    public func free() {
        guard let release else { return }
        self.release = nil
        isLive = false
        invalidateViews()
        release(self)
    }

    /// Called by the owning device when it closes first.
    func invalidate() {
        release = nil
        isLive = false
        invalidateViews()
    }

    private func invalidateViews() {
        let carved = views.withLock { views in
            defer { views.removeAll() }
            return views.compactMap(\.buffer)
        }
        carved.forEach { $0.invalidate() }
    }

    /// Reads the byte at `offset`; a volatile load, as the device may have written it.
    @inlinable
    public func load8(at offset: Int) throws(DeviceError) -> UInt8 {
        try checkAligned(offset, 1)
        return modeless_mmio_read8(base + offset)
    }
    /// Reads the 16-bit value at `offset` (aligned); a volatile load.
    @inlinable
    public func load16(at offset: Int) throws(DeviceError) -> UInt16 {
        try checkAligned(offset, 2)
        return modeless_mmio_read16(base + offset)
    }
    /// Reads the 32-bit value at `offset` (aligned); a volatile load.
    @inlinable
    public func load32(at offset: Int) throws(DeviceError) -> UInt32 {
        try checkAligned(offset, 4)
        return modeless_mmio_read32(base + offset)
    }
    /// Reads the 64-bit value at `offset` (aligned); a volatile load.
    @inlinable
    public func load64(at offset: Int) throws(DeviceError) -> UInt64 {
        try checkAligned(offset, 8)
        return modeless_mmio_read64(base + offset)
    }
    /// Writes the byte `value` at `offset`; a volatile store the device will see.
    @inlinable
    public func store8(_ value: UInt8, at offset: Int) throws(DeviceError) {
        try checkAligned(offset, 1)
        modeless_mmio_write8(base + offset, value)
    }
    /// Writes the 16-bit `value` at `offset` (aligned); a volatile store.
    @inlinable
    public func store16(_ value: UInt16, at offset: Int) throws(DeviceError) {
        try checkAligned(offset, 2)
        modeless_mmio_write16(base + offset, value)
    }
    /// Writes the 32-bit `value` at `offset` (aligned); a volatile store.
    @inlinable
    public func store32(_ value: UInt32, at offset: Int) throws(DeviceError) {
        try checkAligned(offset, 4)
        modeless_mmio_write32(base + offset, value)
    }
    /// Writes the 64-bit `value` at `offset` (aligned); a volatile store.
    @inlinable
    public func store64(_ value: UInt64, at offset: Int) throws(DeviceError) {
        try checkAligned(offset, 8)
        modeless_mmio_write64(base + offset, value)
    }

    /// Copies `bytes` into the buffer at `offset`.
    public func write(_ bytes: [UInt8], at offset: Int = 0) throws(DeviceError) {
        try checkRange(offset, bytes.count)
        bytes.withUnsafeBytes { (base + offset).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        modeless_write_barrier()
    }

    /// Copies `count` bytes out of the buffer from `offset`.
    public func read(_ count: Int, at offset: Int = 0) throws(DeviceError) -> [UInt8] {
        try checkRange(offset, count)
        modeless_read_barrier()
        return [UInt8](UnsafeRawBufferPointer(start: base + offset, count: count))
    }

    /// Sets every byte to `value`.
    public func fill(_ value: UInt8) throws(DeviceError) {
        try checkRange(0, size)
        base.initializeMemory(as: UInt8.self, repeating: value, count: size)
        modeless_write_barrier()
    }

    /// The memory behind `count` bytes at `offset`, after the bounds and freed checks; for the
    /// typed views in this module (``DMABytes``, ``DMAByteWriter``), never handed out.
    @inlinable @inline(__always)
    func pointer(at offset: Int, count: Int) throws(DeviceError) -> UnsafeMutableRawPointer {
        try checkRange(offset, count)
        return base + offset
    }

    /// The checks of a typed access: in range, not freed, and aligned to its width.
    @inlinable @inline(__always)
    func checkAligned(_ offset: Int, _ width: Int) throws(DeviceError) {
        try checkRange(offset, width)
        guard _fastPath(offset & (width &- 1) == 0) else { throw misaligned(offset, width) }
    }

    /// The checks of every access: inlined, with the failure built out of line, so that an
    /// access that passes costs a few compares (the datapaths make several per frame).
    @inlinable @inline(__always)
    func checkRange(_ offset: Int, _ count: Int) throws(DeviceError) {
        guard _fastPath(isLive && offset >= 0 && count >= 0 && offset <= size &- count) else {
            throw rangeFailure(offset, count)
        }
    }

    /// The failure of a misaligned typed access.
    @usableFromInline @inline(never)
    func misaligned(_ offset: Int, _ width: Int) -> DeviceError {
        DeviceError(.outOfRange, device, "DMA buffer: \(width)-byte access at \(offset) is misaligned")
    }

    /// Why ``checkRange(_:_:)`` refused: the buffer was freed (recorded for a verifier), or
    /// the range is outside it.
    @usableFromInline @inline(never)
    func rangeFailure(_ offset: Int, _ count: Int) -> DeviceError {
        guard !isFreed else {
            let error = DeviceError(.closed, device, "DMA buffer at 0x\(String(deviceAddress, radix: 16)) was freed")
            health.record(.accessAfterRelease(error.message))
            return error
        }
        return DeviceError(.outOfRange, device, "DMA buffer: \(count) bytes at \(offset) are outside its \(size) bytes")
    }
}
