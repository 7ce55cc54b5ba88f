import CModelessShim

/// A DMA buffer seen as `count` equal slots of `stride` bytes (the descriptors of a ring, the
/// frame buffers of a pool), for a datapath that touches many slots in one batch.
///
/// The buffer's checks (not freed, `count` × `stride` bytes inside it) are made once, when the
/// view is made (`DMABuffer.slots(stride:count:)`, `DMAPool.slots()`, package API); each access then
/// checks only that its slot is below `count` and its bytes lie inside the slot: one compare
/// for the slot, and compares on constants that the compiler folds away when the place in the
/// slot is a constant (a descriptor field). A failed check traps, as an array's out-of-range
/// subscript does: the slot comes from the driver's own ring index, so one outside the ring is
/// a bug, not a condition to handle.
///
/// Views are made by this package's drivers for one batch, under the lock that serializes it,
/// and cannot be copied. A buffer freed while a view of it is held is seen by the next view
/// made, not by the held one: hold a view for a batch, no longer.
///
/// Stores through the view are plain (volatile for the typed ones); call
/// ``orderStoresBeforeDoorbell()`` once after the batch's stores and before the register write
/// that hands them to the device.
public struct DMASlots: ~Copyable {
    @usableFromInline let base: UnsafeMutableRawPointer
    /// Bytes per slot.
    public let stride: Int
    /// How many slots the view covers.
    public let count: Int

    @usableFromInline
    init(base: UnsafeMutableRawPointer, stride: Int, count: Int) {
        self.base = base
        self.stride = stride
        self.count = count
    }

    /// The checks of every access: `slot` below ``count`` (one unsigned compare), and `width`
    /// bytes at `offset` inside the slot and aligned to `alignment`.
    @inlinable @inline(__always)
    func address(_ slot: Int, _ offset: Int, _ width: Int, alignment: Int = 1) -> UnsafeMutableRawPointer {
        precondition(UInt(bitPattern: slot) < UInt(bitPattern: count), "DMA slots: slot \(slot) is outside 0..<\(count)")
        precondition(offset >= 0 && width >= 0 && offset <= stride &- width && (offset | stride) & (alignment &- 1) == 0,
                     "DMA slots: \(width) bytes at \(offset) are outside a slot of \(stride) bytes or misaligned")
        return base + (slot &* stride &+ offset)
    }

    /// Reads the byte at `offset` in `slot`; a volatile load, as the device may have written it.
    @inlinable @inline(__always)
    public func load8(slot: Int, at offset: Int) -> UInt8 {
        modeless_mmio_read8(address(slot, offset, 1))
    }

    /// Writes the byte `value` at `offset` in `slot`; a volatile store.
    @inlinable @inline(__always)
    public func store8(_ value: UInt8, slot: Int, at offset: Int) {
        modeless_mmio_write8(address(slot, offset, 1), value)
    }

    /// Writes the 64-bit `value` at `offset` (a multiple of 8) in `slot`; a volatile store.
    @inlinable @inline(__always)
    public func store64(_ value: UInt64, slot: Int, at offset: Int) {
        modeless_mmio_write64(address(slot, offset, 8, alignment: 8), value)
    }

    /// Lends a writer over the first `capacity` bytes of `slot` to `body` (which fills it in
    /// place) and returns how many bytes it wrote (``DMAByteWriter/count``). Unlike
    /// ``DMAPool/withWriter(of:capacity:_:)`` it issues no barrier: the batch's one
    /// ``orderStoresBeforeDoorbell()`` orders every frame written before the doorbell.
    @inlinable @inline(__always)
    public func withWriter(slot: Int, capacity: Int, _ body: (inout DMAByteWriter) -> Void) -> Int {
        var writer = DMAByteWriter(base: address(slot, 0, capacity), capacity: capacity)
        body(&writer)
        return writer.count
    }

    /// Orders every store made through the view before a later doorbell (register) write, so
    /// the device sees the batch when the doorbell tells it to look.
    @inlinable @inline(__always)
    public func orderStoresBeforeDoorbell() {
        modeless_write_barrier()
    }
}

extension DMABuffer {
    /// The buffer as `count` slots of `stride` bytes from its start, checked once here (not
    /// freed, and the slots inside the buffer), for one batch of a driver's datapath; see
    /// ``DMASlots``. Throws, changing nothing, when the buffer was freed (recorded for a
    /// verifier, as any access to a freed buffer is) or the slots do not fit.
    package func slots(stride: Int, count: Int) throws(DeviceError) -> DMASlots {
        let (bytes, overflow) = stride.multipliedReportingOverflow(by: count)
        guard stride > 0, count >= 0, !overflow else {
            throw DeviceError(.outOfRange, device, "DMA buffer: \(count) slots of \(stride) bytes is not a valid layout")
        }
        try checkRange(0, bytes)
        return DMASlots(base: base, stride: stride, count: count)
    }
}

extension DMAPool {
    /// Every chunk of the pool as a slot (slot `i` is chunk `i`), checked once here; see
    /// ``DMASlots``.
    package func slots() throws(DeviceError) -> DMASlots {
        try buffer.slots(stride: chunkSize, count: capacity)
    }
}
