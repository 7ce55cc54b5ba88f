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
        let length = huge ? DMAPageSize.huge : DMAPageSize.small
        let limit: UInt64 = options.dmaAddressBits >= 64 ? .max : 1 << UInt64(options.dmaAddressBits)
        // Without an IOMMU the device sees physical addresses: keep trying until a page lies
        // below its DMA limit, then give back the ones that did not.
        var rejected: [UnsafeMutableRawPointer] = []
        defer { for page in rejected { _ = system.munmap(page, length) } }
        for _ in 0..<Self.dmaPlacementAttempts {
            let (base, physical) = try mapPhysicalPage(length: length, huge: huge)
            if physical + UInt64(length) <= limit {
                return makeBuffer(base: base, physical: physical, length: length)
            }
            rejected.append(base)
        }
        throw DeviceError(.outOfDeviceAddresses, address,
                          "no free \(huge ? "huge " : "")page below the device's \(options.dmaAddressBits)-bit DMA limit after \(Self.dmaPlacementAttempts) tries; without an IOMMU memory cannot be remapped for it: bind to vfio-pci")
    }

    /// How many pages a UIO allocation tries before giving up on the DMA limit.
    static let dmaPlacementAttempts = 256

    private func mapPhysicalPage(length: Int, huge: Bool) throws(DeviceError) -> (UnsafeMutableRawPointer, UInt64) {
        let flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE | MAP_LOCKED | (huge ? MAP_HUGETLB : 0)
        let base: UnsafeMutableRawPointer
        do {
            base = try system.map(length, protection: PROT_READ | PROT_WRITE, flags: flags, fd: -1, offset: 0, "DMA memory")
        } catch {
            let hint = huge ? " (reserve huge pages: echo 16 > /proc/sys/vm/nr_hugepages)" : ""
            throw DeviceError(.system, address, "\(error)\(hint)", systemError: error)
        }
        let physical: UInt64
        do {
            physical = try Self.physicalAddress(of: base)
        } catch {
            _ = system.munmap(base, length)
            throw DeviceError(error, address)
        }
        guard physical != 0 else {
            _ = system.munmap(base, length)
            throw DeviceError(.system, address, "/proc/self/pagemap hid the physical address: DMA over UIO needs root (CAP_SYS_ADMIN)")
        }
        return (base, physical)
    }

    private func makeBuffer(base: UnsafeMutableRawPointer, physical: UInt64, length: Int) -> DMABuffer {
        let buffer = DMABuffer(size: length, deviceAddress: physical, device: address, base: base) { [weak self] buffer in
            guard let self, let record = self.state.withLock({ $0.buffers.removeValue(forKey: buffer.deviceAddress) }) else { return }
            _ = self.system.munmap(record.base, record.length)
        }
        state.withLock { $0.buffers[physical] = DMARecord(base: base, length: length, buffer: buffer) }
        return buffer
    }

    /// The physical address of a resident page, from `/proc/self/pagemap`
    /// (one 64-bit entry per page: bit 63 present, bits 0–54 the page frame number).
    static func physicalAddress(of pointer: UnsafeMutableRawPointer) throws(SystemError) -> UInt64 {
        let virtualAddress = UInt64(UInt(bitPattern: pointer))
        let page = UInt64(DMAPageSize.small)
        let fd = try systemCall("open", "/proc/self/pagemap") { open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC) }
        defer { Glibc.close(fd) }
        var entry: UInt64 = 0
        let count = try systemCall("pread", "/proc/self/pagemap") {
            withUnsafeMutableBytes(of: &entry) { pread(fd, $0.baseAddress, 8, Int(virtualAddress / page * 8)) }
        }
        guard count == 8, entry & (1 << 63) != 0 else { throw SystemError("pagemap", "page not resident", errno: .ioError) }
        let frame = entry & ((1 << 55) - 1)
        return frame * page + virtualAddress % page
    }
}
