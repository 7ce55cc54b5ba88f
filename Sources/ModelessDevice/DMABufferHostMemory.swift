/// The host memory behind a DMA buffer, for a kernel interface that copies into and out of
/// user memory by address (ublk's per-tag I/O buffers): the kernel copies a request's data
/// straight into memory the device then reads by DMA, and out of memory the device wrote.
extension DMABuffer {
    /// `count` bytes at `offset` as host memory, after the bounds and freed checks. The memory
    /// stays valid until ``free()`` (or the device's close); the caller must stop every use of
    /// it, its own and the kernel's, before then.
    public func hostMemory(at offset: Int, count: Int) throws(DeviceError) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: try pointer(at: offset, count: count), count: count)
    }
}
