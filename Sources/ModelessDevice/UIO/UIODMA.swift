import ModelessBus
import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

extension UIODevice {
    /// Allocates physically contiguous memory for DMA without an IOMMU: one locked 4 KiB page,
    /// or one 2 MiB huge page for larger buffers. Needs ``Options/allowUnisolatedDMA`` and root
    /// (physical addresses come from `/proc/self/pagemap`).
    public func allocateDMA(size: Int) throws(DeviceError) -> DMABuffer {
        try checkOpen()
        guard options.allowUnisolatedDMA else {
            throw DeviceError(.unisolatedDMANotAllowed, address,
                              "UIO gives the device no DMA isolation (it can write any memory); opt in with allowUnisolatedDMA, or bind to vfio-pci")
        }
        guard size > 0, size <= DMAPageSize.huge else {
            throw DeviceError(.outOfRange, address, "a UIO DMA buffer is 1 byte to 2 MiB (one contiguous page), not \(size)")
        }
        let huge = size > DMAPageSize.small
        let page = huge ? DMAPageSize.huge : DMAPageSize.small
        let limit: UInt64 = options.dmaAddressBits >= 64 ? .max : 1 << UInt64(options.dmaAddressBits)
        // Without an IOMMU the device sees physical addresses: keep trying until a page lies
        // below its DMA limit, holding the ones that did not (so they are not handed out
        // again), then give those back. A huge page is tried whole. Small pages are tried one
        // first (with a wide limit, or plenty of memory below it, it fits and nothing more is
        // mapped), then a region at a time: the kernel hands out consecutive pages from one
        // free block it splits, so pages taken one by one can all lie in one block above the
        // limit while free memory below it goes unseen.
        let tries = huge ? Array(repeating: page, count: Self.dmaPlacementAttempts)
                         : [page] + Array(repeating: Self.dmaProbeRegion, count: Self.dmaPlacementAttempts)
        var rejected: [(base: UnsafeMutableRawPointer, length: Int)] = []
        defer { for region in rejected { _ = system.munmap(region.base, region.length) } }
        for length in tries {
            let base = try mapLocked(length: length, huge: huge)
            let frames = try physicalAddresses(of: base, length: length, page: page)
            guard let index = Self.firstPage(of: frames, size: page, below: limit) else {
                rejected.append((base, length))
                continue
            }
            let chosen = base + index * page
            let after = length - (index + 1) * page
            if index > 0 { rejected.append((base, index * page)) }
            if after > 0 { rejected.append((chosen + page, after)) }
            return makeBuffer(base: chosen, physical: frames[index], length: page)
        }
        let probed = huge ? "\(Self.dmaPlacementAttempts) huge pages" : "\(Self.dmaPlacementAttempts * Self.dmaProbeRegion >> 20) MiB of pages"
        throw DeviceError(.outOfDeviceAddresses, address,
                          "no free \(huge ? "huge " : "")page below the device's \(options.dmaAddressBits)-bit DMA limit in \(probed); without an IOMMU memory cannot be remapped for it: bind to vfio-pci")
    }

    /// How many huge pages, or regions of small pages, a UIO allocation tries before giving
    /// up on the DMA limit.
    static let dmaPlacementAttempts = 64

    /// The bytes of small pages mapped and looked up at once while placing a small buffer:
    /// 512 pages, their physical addresses read in one `pread` of `/proc/self/pagemap`.
    static let dmaProbeRegion = DMAPageSize.huge

    /// Maps `length` bytes of resident, locked memory (huge pages if `huge`).
    private func mapLocked(length: Int, huge: Bool) throws(DeviceError) -> UnsafeMutableRawPointer {
        let flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE | MAP_LOCKED | (huge ? MAP_HUGETLB : 0)
        do {
            return try system.map(length, protection: PROT_READ | PROT_WRITE, flags: flags, fd: -1, offset: 0, "DMA memory")
        } catch {
            let hint = huge ? " (reserve huge pages: echo 16 > /proc/sys/vm/nr_hugepages)" : ""
            throw DeviceError(.system, address, "\(error)\(hint)", systemError: error)
        }
    }

    /// The physical address of each `page`-byte page of a mapping (unmapped on failure), 0
    /// where the page is not resident.
    private func physicalAddresses(of base: UnsafeMutableRawPointer, length: Int, page: Int) throws(DeviceError) -> [UInt64] {
        let frames: [UInt64]
        do {
            // A huge page's first 4 KiB entry gives its address; small pages have one each.
            frames = try Self.physicalAddresses(of: base, pages: length / page)
        } catch {
            _ = system.munmap(base, length)
            throw DeviceError(error, address)
        }
        guard frames.contains(where: { $0 != 0 }) else {
            _ = system.munmap(base, length)
            throw DeviceError(.system, address, "/proc/self/pagemap hid the physical address: DMA over UIO needs root (CAP_SYS_ADMIN)")
        }
        return frames
    }

    private func makeBuffer(base: UnsafeMutableRawPointer, physical: UInt64, length: Int) -> DMABuffer {
        let buffer = DMABuffer(size: length, deviceAddress: physical, device: address, base: base) { [weak self] buffer in
            guard let self, let record = self.state.withLock({ $0.buffers.removeValue(forKey: buffer.deviceAddress) }) else { return }
            _ = self.system.munmap(record.base, record.length)
        }
        state.withLock { $0.buffers[physical] = DMARecord(base: base, length: length, buffer: buffer) }
        return buffer
    }

    /// The index of the first page of `size` bytes among `frames` (physical addresses, 0 for
    /// a page not resident) that lies wholly below `limit`.
    static func firstPage(of frames: [UInt64], size: Int, below limit: UInt64) -> Int? {
        let size = UInt64(size)
        return frames.firstIndex { $0 != 0 && limit >= size && $0 <= limit - size }
    }

    /// The physical addresses of `pages` consecutive 4 KiB pages from `pointer` (page
    /// aligned), from `/proc/self/pagemap` in one read (one 64-bit entry per page: bit 63
    /// present, bits 0–54 the page frame number); 0 for a page not resident.
    static func physicalAddresses(of pointer: UnsafeMutableRawPointer, pages: Int) throws(SystemError) -> [UInt64] {
        let virtualAddress = UInt64(UInt(bitPattern: pointer))
        let page = UInt64(DMAPageSize.small)
        let fd = try systemCall("open", "/proc/self/pagemap") { open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC) }
        defer { Glibc.close(fd) }
        var entries = [UInt64](repeating: 0, count: pages)
        let count = try systemCall("pread", "/proc/self/pagemap") {
            entries.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, Int(virtualAddress / page * 8)) }
        }
        guard count == pages * 8 else { throw SystemError("pagemap", "a short read of \(count) of \(pages * 8) bytes", errno: .ioError) }
        return entries.map { $0 & (1 << 63) != 0 ? ($0 & ((1 << 55) - 1)) * page : 0 }
    }
}
