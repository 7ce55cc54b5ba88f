import ModelessBus
import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// Page sizes for DMA memory: 2 MiB huge pages for large buffers when the system has them.
enum DMAPageSize {
    static let small = 4096
    static let huge = 2 << 20

    static func roundUp(_ size: Int, to page: Int) -> Int { (size + page - 1) / page * page }
}

extension VFIODevice {
    /// Allocates `size` bytes (rounded up to whole pages; 2 MiB huge pages from 2 MiB up when
    /// available), maps them into the IOMMU below the device's DMA limit, and returns them.
    public func allocateDMA(size: Int) throws(DeviceError) -> DMABuffer {
        try checkOpen()
        guard mapsDMA else {
            throw DeviceError(.system, address, "no DMA memory can be mapped before the adopted device is taken over (its window overlaps its holder's)")
        }
        guard size > 0 else { throw DeviceError(.outOfRange, address, "DMA buffer size must be positive, not \(size)") }
        var page = size >= DMAPageSize.huge ? DMAPageSize.huge : DMAPageSize.small
        var length = DMAPageSize.roundUp(size, to: page)
        let flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE
        var memory = page == DMAPageSize.huge ? system.mmap(length, PROT_READ | PROT_WRITE, flags | MAP_HUGETLB, -1, 0) : nil
        if memory == nil {
            page = DMAPageSize.small
            length = DMAPageSize.roundUp(size, to: page)
            memory = DMAMemoryReserve.take(length)
        }
        if memory == nil {
            do {
                memory = try system.map(length, protection: PROT_READ | PROT_WRITE, flags: flags, fd: -1, offset: 0, "DMA memory")
            } catch { throw DeviceError(error, address) }
        }
        let base = memory!
        let pageSize = UInt64(page)
        guard let iova = state.withLock({ $0.allocator.allocate(size: UInt64(length), alignment: pageSize) }) else {
            _ = system.munmap(base, length)
            throw DeviceError(.outOfDeviceAddresses, address, "no device address range of \(length) bytes is left below the DMA limit")
        }
        do {
            try container.mapDMA(virtualAddress: base, iova: iova, size: UInt64(length))
        } catch {
            state.withLock { $0.allocator.release(iova, size: UInt64(length)) }
            _ = system.munmap(base, length)
            throw DeviceError(error, address)
        }
        let buffer = DMABuffer(size: length, deviceAddress: iova, device: address, base: base) { [weak self] buffer in
            self?.releaseDMA(buffer)
        }
        state.withLock { $0.buffers[iova] = DMARecord(base: base, length: length, buffer: buffer) }
        return buffer
    }

    /// Unmaps a buffer from the IOMMU, returns its device addresses and frees its memory.
    func releaseDMA(_ buffer: DMABuffer) {
        guard let record = state.withLock({ $0.buffers.removeValue(forKey: buffer.deviceAddress) }) else { return }
        if !record.holderMayUse { try? container.unmapDMA(iova: buffer.deviceAddress, size: UInt64(record.length)) }
        _ = system.munmap(record.base, record.length)
        if record.memfd >= 0 {
            _ = system.close(record.memfd)  // kept memory: its address is the kept region's, no allocator's
        } else {
            state.withLock { $0.allocator.release(buffer.deviceAddress, size: UInt64(record.length)) }
        }
    }

    /// How many DMA buffers are live (for leak checks).
    public var liveDMABufferCount: Int { state.withLock { $0.buffers.count } }
}
