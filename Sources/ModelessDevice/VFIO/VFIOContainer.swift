import CModelessShim
import ModelessBus
import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// A VFIO container (`/dev/vfio/vfio`) with one group attached and the type-1 IOMMU set:
/// the address space the group's devices see for DMA.
final class VFIOContainer: @unchecked Sendable {
    let containerFD: Int32
    let groupFD: Int32
    let group: Int
    let system: any SystemCalls
    private var isOpen = true
    /// Copies of the descriptors were handed to another process (``VFIOHandover``): closing
    /// only closes them, without detaching the group, which the other process still uses.
    var isShared = false

    /// Opens the container and group `group`, checks the group is viable, attaches it and
    /// selects the type-1 IOMMU (v2 when offered). On failure, closes what it opened.
    init(group: Int, device: PCIAddress, system: any SystemCalls) throws(DeviceError) {
        self.group = group
        self.system = system
        var opened: [Int32] = []
        do {
            let container = try system.openFile("/dev/vfio/vfio", O_RDWR)
            opened.append(container)
            let version = try system.ioctl(container, modeless_VFIO_GET_API_VERSION, value: 0, "VFIO_GET_API_VERSION", "/dev/vfio/vfio")
            guard version == VFIO_API_VERSION else {
                throw DeviceError(.unsupported, device, "VFIO API version \(version), expected \(VFIO_API_VERSION)")
            }
            let type1v2 = try system.ioctl(container, modeless_VFIO_CHECK_EXTENSION, value: UInt(VFIO_TYPE1v2_IOMMU),
                                           "VFIO_CHECK_EXTENSION", "/dev/vfio/vfio")
            let type1 = try system.ioctl(container, modeless_VFIO_CHECK_EXTENSION, value: UInt(VFIO_TYPE1_IOMMU),
                                         "VFIO_CHECK_EXTENSION", "/dev/vfio/vfio")
            guard type1v2 == 1 || type1 == 1 else {
                throw DeviceError(.unsupported, device, "the kernel's VFIO offers no type-1 IOMMU")
            }

            let groupPath = "/dev/vfio/\(group)"
            let groupFD = try system.openFile(groupPath, O_RDWR)
            opened.append(groupFD)
            var status = vfio_group_status(argsz: UInt32(MemoryLayout<vfio_group_status>.size), flags: 0)
            _ = try system.ioctl(groupFD, modeless_VFIO_GROUP_GET_STATUS, &status, "VFIO_GROUP_GET_STATUS", groupPath)
            guard status.flags & UInt32(VFIO_GROUP_FLAGS_VIABLE) != 0 else {
                throw DeviceError(.groupNotViable, device,
                                  "VFIO group \(group) is not viable: bind every device in it to vfio-pci (`modeless info \(device)` lists them)")
            }
            var containerValue = container
            _ = try system.ioctl(groupFD, modeless_VFIO_GROUP_SET_CONTAINER, &containerValue, "VFIO_GROUP_SET_CONTAINER", groupPath)
            _ = try system.ioctl(container, modeless_VFIO_SET_IOMMU, value: UInt(type1v2 == 1 ? VFIO_TYPE1v2_IOMMU : VFIO_TYPE1_IOMMU),
                                 "VFIO_SET_IOMMU", "/dev/vfio/vfio")
            containerFD = container
            self.groupFD = groupFD
        } catch let error as DeviceError {
            opened.reversed().forEach { _ = system.close($0) }
            throw error
        } catch let error as SystemError {
            opened.reversed().forEach { _ = system.close($0) }
            throw DeviceError(error, device)
        } catch {
            opened.reversed().forEach { _ = system.close($0) }
            throw DeviceError(.system, device, "\(error)")
        }
    }

    /// Adopts a container and group another process opened (``VFIOHandover``): checks that
    /// the group is viable and attached to a container with the type-1 IOMMU set (a
    /// `VFIO_IOMMU_GET_INFO` answers only then). Takes ownership of both descriptors only on
    /// success; on failure the caller still owns them.
    init(adopting containerFD: Int32, groupFD: Int32, group: Int, device: PCIAddress, system: any SystemCalls) throws(DeviceError) {
        let groupPath = "/dev/vfio/\(group)"
        var status = vfio_group_status(argsz: UInt32(MemoryLayout<vfio_group_status>.size), flags: 0)
        do {
            _ = try system.ioctl(groupFD, modeless_VFIO_GROUP_GET_STATUS, &status, "VFIO_GROUP_GET_STATUS", groupPath)
        } catch { throw DeviceError(error, device) }
        guard status.flags & UInt32(VFIO_GROUP_FLAGS_VIABLE) != 0, status.flags & UInt32(VFIO_GROUP_FLAGS_CONTAINER_SET) != 0 else {
            throw DeviceError(.groupNotViable, device, "the handed-over VFIO group \(group) is not viable or no longer attached to its container")
        }
        var info = vfio_iommu_type1_info()
        info.argsz = UInt32(MemoryLayout<vfio_iommu_type1_info>.size)
        do {
            _ = try system.ioctl(containerFD, modeless_VFIO_IOMMU_GET_INFO, &info, "VFIO_IOMMU_GET_INFO", "/dev/vfio/vfio (handed over)")
        } catch { throw DeviceError(error, device) }
        self.group = group
        self.system = system
        self.containerFD = containerFD
        self.groupFD = groupFD
        isShared = true
    }

    /// Gives up adopted descriptors without closing them (their adoption failed; the caller
    /// still owns them).
    func abandon() { isOpen = false }

    /// Removes every IOMMU mapping of the container, also those a dead process made
    /// (`VFIO_DMA_UNMAP_FLAG_ALL`; on a kernel without it, the whole range below 2^63).
    /// Only safe while the device cannot do DMA (bus mastering off).
    func unmapAll() throws(SystemError) {
        var unmap = vfio_iommu_type1_dma_unmap()
        unmap.argsz = UInt32(MemoryLayout<vfio_iommu_type1_dma_unmap>.size)
        unmap.flags = UInt32(VFIO_DMA_UNMAP_FLAG_ALL)
        do {
            _ = try system.ioctl(containerFD, modeless_VFIO_IOMMU_UNMAP_DMA, &unmap, "VFIO_IOMMU_UNMAP_DMA", "all")
        } catch where error.errno == .invalidArgument {
            unmap.flags = 0
            unmap.iova = 0
            unmap.size = 1 << 63
            _ = try system.ioctl(containerFD, modeless_VFIO_IOMMU_UNMAP_DMA, &unmap, "VFIO_IOMMU_UNMAP_DMA", "iova 0 size 2^63")
        }
    }

    /// Removes every IOMMU mapping that lies inside `range` (each mapping lies wholly inside
    /// or wholly outside it: a process maps within its own window).
    func unmap(range: Range<UInt64>) throws(SystemError) {
        var unmap = vfio_iommu_type1_dma_unmap()
        unmap.argsz = UInt32(MemoryLayout<vfio_iommu_type1_dma_unmap>.size)
        unmap.iova = range.lowerBound
        unmap.size = range.byteCount
        _ = try system.ioctl(containerFD, modeless_VFIO_IOMMU_UNMAP_DMA, &unmap, "VFIO_IOMMU_UNMAP_DMA",
                             "iova 0x\(String(range.lowerBound, radix: 16)) size 0x\(String(range.byteCount, radix: 16))")
    }

    /// Opens the device fd for `device`.
    func openDevice(_ device: PCIAddress) throws(DeviceError) -> Int32 {
        var name = Array(device.description.utf8CString)
        do {
            return try system.checked("VFIO_GROUP_GET_DEVICE_FD", "/dev/vfio/\(group)") {
                name.withUnsafeMutableBytes { system.ioctl(groupFD, modeless_VFIO_GROUP_GET_DEVICE_FD, $0.baseAddress) }
            }
        } catch {
            throw DeviceError(error, device)
        }
    }

    /// Maps `size` bytes at `virtualAddress` to `iova` in the IOMMU, readable and writable by the device.
    func mapDMA(virtualAddress: UnsafeMutableRawPointer, iova: UInt64, size: UInt64) throws(SystemError) {
        var map = vfio_iommu_type1_dma_map(
            argsz: UInt32(MemoryLayout<vfio_iommu_type1_dma_map>.size),
            flags: UInt32(VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE),
            vaddr: UInt64(UInt(bitPattern: virtualAddress)), iova: iova, size: size)
        _ = try system.ioctl(containerFD, modeless_VFIO_IOMMU_MAP_DMA, &map, "VFIO_IOMMU_MAP_DMA",
                             "iova 0x\(String(iova, radix: 16)) size \(size)")
    }

    /// Removes the IOMMU mapping at `iova`.
    func unmapDMA(iova: UInt64, size: UInt64) throws(SystemError) {
        var unmap = vfio_iommu_type1_dma_unmap()
        unmap.argsz = UInt32(MemoryLayout<vfio_iommu_type1_dma_unmap>.size)
        unmap.iova = iova
        unmap.size = size
        _ = try system.ioctl(containerFD, modeless_VFIO_IOMMU_UNMAP_DMA, &unmap, "VFIO_IOMMU_UNMAP_DMA",
                             "iova 0x\(String(iova, radix: 16)) size \(size)")
    }

    /// Detaches the group and closes both descriptors. Idempotent.
    func close() {
        guard isOpen else { return }
        isOpen = false
        if !isShared {
            var containerValue = containerFD
            _ = withUnsafeMutableBytes(of: &containerValue) { system.ioctl(groupFD, modeless_VFIO_GROUP_UNSET_CONTAINER, $0.baseAddress) }
        }
        _ = system.close(groupFD)
        _ = system.close(containerFD)
    }
}
