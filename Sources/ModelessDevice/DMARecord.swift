/// What a backend keeps about a live DMA buffer so that closing the device can release it:
/// its memory, its length, and the buffer object (weakly: freeing it must stay possible).
struct DMARecord: @unchecked Sendable {
    var base: UnsafeMutableRawPointer
    var length: Int
    weak var buffer: DMABuffer?
    /// The memfd behind kept DMA memory (``VFIODevice/allocateKeptDMA(size:)``), closed with
    /// the buffer; -1 for anonymous memory.
    var memfd: Int32 = -1
    /// Kept memory inherited before the takeover: its holder may still be running on it, so
    /// releasing it here leaves the IOMMU mapping alone (the holder's, in the shared container).
    var holderMayUse = false
}
