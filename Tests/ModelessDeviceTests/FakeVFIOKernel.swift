import CModelessShim
import Glibc
import ModelessSystem
import Synchronization

/// An in-process stand-in for the kernel's VFIO: `/dev/vfio/vfio`, one group, and one
/// edu-like device (1 MiB BAR0 reading 0x010000ed, 256 bytes of config space, INTx and one
/// MSI vector). Everything else (eventfds, anonymous memory) goes to the real kernel.
///
/// It records calls, tracks what is open and mapped, and fails chosen ioctls on request.
final class FakeVFIOKernel: SystemCalls, @unchecked Sendable {
    struct State {
        var nextFD: Int32 = 900_000
        var open: [Int32: String] = [:]
        var deviceMappings: Set<UInt> = []
        var iommu: [UInt64: UInt64] = [:]
        var irqTriggers: [UInt32: [Int32]] = [:]
        var unmasks = 0
        var eventfds: Set<Int32> = []
        var failures: [String: Errno] = [:]
        var groupViable = true
        /// Whether the group is attached to a container (VFIO_GROUP_FLAGS_CONTAINER_SET).
        var containerSet = false
        /// Whether the device offers the request interrupt (VFIO_PCI_REQ_IRQ_INDEX), as vfio-pci does.
        var requestInterruptOffered = true
        var config = [UInt8](repeating: 0, count: 256)
        var calls: [String] = []
        var lastErrno = Errno(rawValue: 0)
    }

    let state = Mutex(State())
    static let barSize = 1 << 20
    static let regionOffset: UInt64 = 0x1000_0000
    static let configOffset: UInt64 = 0x7000_0000

    init() {
        state.withLock { state in
            state.config[0] = 0x34; state.config[1] = 0x12; state.config[2] = 0xe8; state.config[3] = 0x11
            state.config[0x06] = 0x10; state.config[0x34] = 0x40; state.config[0x3D] = 1
            state.config[0x40] = 0x05  // MSI capability, end of list
        }
    }

    func fail(_ operation: String, with errno: Errno) { state.withLock { $0.failures[operation] = errno } }
    var openDescriptors: [String] { state.withLock { Array($0.open.values).sorted() } }
    var iommuMappings: [UInt64: UInt64] { state.withLock { $0.iommu } }
    var calls: [String] { state.withLock { $0.calls } }
    var unmasks: Int { state.withLock { $0.unmasks } }
    /// Eventfds created through this kernel and not yet closed.
    var openEventfds: Int { state.withLock { $0.eventfds.count } }
    func setGroupViable(_ viable: Bool) { state.withLock { $0.groupViable = viable } }
    func setContainerSet(_ set: Bool) { state.withLock { $0.containerSet = set } }
    /// Maps an IOVA range as another process would have (for adoption tests).
    func mapForeign(iova: UInt64, size: UInt64) { state.withLock { $0.iommu[iova] = size } }

    private func isFake(_ fd: Int32) -> Bool { fd >= 900_000 }

    private func failing(_ operation: String) -> Bool {
        state.withLock { state in
            state.calls.append(operation)
            guard let errno = state.failures.removeValue(forKey: operation) else { return false }
            state.lastErrno = errno
            return true
        }
    }

    private func error(_ errno: Errno) -> Int32 {
        state.withLock { $0.lastErrno = errno }
        return -1
    }

    // MARK: SystemCalls

    /// The errno this fake set, or the real one after a call passed through to the kernel.
    func lastError() -> Errno {
        let real = Errno.current
        return state.withLock { state in
            defer { state.lastErrno = Errno(rawValue: 0) }
            return state.lastErrno.rawValue != 0 ? state.lastErrno : real
        }
    }

    func open(_ path: String, _ flags: Int32, _ mode: mode_t) -> Int32 {
        guard path.hasPrefix("/dev/vfio/") else { return Glibc.open(path, flags, mode) }
        if failing("open \(path)") { return -1 }
        return state.withLock { state in
            let fd = state.nextFD
            state.nextFD += 1
            state.open[fd] = path == "/dev/vfio/vfio" ? "container" : "group"
            return fd
        }
    }

    func close(_ fd: Int32) -> Int32 {
        guard isFake(fd) else {
            state.withLock { _ = $0.eventfds.remove(fd) }
            return Glibc.close(fd)
        }
        return state.withLock { $0.open.removeValue(forKey: fd) } == nil ? error(.badFileDescriptor) : 0
    }

    func ioctl(_ fd: Int32, _ request: UInt, value: UInt) -> Int32 {
        switch request {
        case modeless_VFIO_GET_API_VERSION: return failing("VFIO_GET_API_VERSION") ? -1 : VFIO_API_VERSION
        case modeless_VFIO_CHECK_EXTENSION: return failing("VFIO_CHECK_EXTENSION") ? -1 : (value == UInt(VFIO_TYPE1v2_IOMMU) ? 1 : 0)
        case modeless_VFIO_SET_IOMMU: return failing("VFIO_SET_IOMMU") ? -1 : 0
        case modeless_VFIO_DEVICE_RESET: return failing("VFIO_DEVICE_RESET") ? -1 : 0
        default: return error(.invalidArgument)
        }
    }

    func ioctl(_ fd: Int32, _ request: UInt, _ argument: UnsafeMutableRawPointer?) -> Int32 {
        guard let argument else { return error(.badAddress) }
        switch request {
        case modeless_VFIO_GROUP_GET_STATUS:
            if failing("VFIO_GROUP_GET_STATUS") { return -1 }
            let (viable, attached) = state.withLock { ($0.groupViable, $0.containerSet) }
            argument.storeBytes(of: (viable ? UInt32(VFIO_GROUP_FLAGS_VIABLE) : 0) | (attached ? UInt32(VFIO_GROUP_FLAGS_CONTAINER_SET) : 0),
                                toByteOffset: 4, as: UInt32.self)
            return 0
        case modeless_VFIO_GROUP_SET_CONTAINER:
            if failing("VFIO_GROUP_SET_CONTAINER") { return -1 }
            state.withLock { $0.containerSet = true }
            return 0
        case modeless_VFIO_GROUP_UNSET_CONTAINER:
            if failing("VFIO_GROUP_UNSET_CONTAINER") { return -1 }
            state.withLock { $0.containerSet = false }
            return 0
        case modeless_VFIO_IOMMU_GET_INFO:
            if failing("VFIO_IOMMU_GET_INFO") { return -1 }
            return state.withLock { $0.containerSet } ? 0 : error(.invalidArgument)
        case modeless_VFIO_GROUP_GET_DEVICE_FD:
            if failing("VFIO_GROUP_GET_DEVICE_FD") { return -1 }
            return state.withLock { state in
                let fd = state.nextFD
                state.nextFD += 1
                state.open[fd] = "device " + String(cString: argument.assumingMemoryBound(to: CChar.self))
                return fd
            }
        case modeless_VFIO_DEVICE_GET_INFO:
            if failing("VFIO_DEVICE_GET_INFO") { return -1 }
            let info = argument.assumingMemoryBound(to: vfio_device_info.self)
            info.pointee.flags = UInt32(VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET)
            info.pointee.num_regions = 9
            info.pointee.num_irqs = 5
            return 0
        case modeless_VFIO_DEVICE_GET_REGION_INFO:
            if failing("VFIO_DEVICE_GET_REGION_INFO") { return -1 }
            let region = argument.assumingMemoryBound(to: vfio_region_info.self)
            switch region.pointee.index {
            case 0:
                region.pointee.size = UInt64(Self.barSize)
                region.pointee.offset = Self.regionOffset
                region.pointee.flags = UInt32(VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP)
            case 7:
                region.pointee.size = 256
                region.pointee.offset = Self.configOffset
                region.pointee.flags = UInt32(VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE)
            default:
                region.pointee.size = 0
            }
            return 0
        case modeless_VFIO_DEVICE_GET_IRQ_INFO:
            if failing("VFIO_DEVICE_GET_IRQ_INFO") { return -1 }
            let irq = argument.assumingMemoryBound(to: vfio_irq_info.self)
            let offersRequest = state.withLock { $0.requestInterruptOffered }
            irq.pointee.count = irq.pointee.index <= 1 || (irq.pointee.index == 4 && offersRequest) ? 1 : 0  // INTx, MSI, request
            return 0
        case modeless_VFIO_DEVICE_SET_IRQS:
            if failing("VFIO_DEVICE_SET_IRQS") { return -1 }
            let flags = argument.load(fromByteOffset: 4, as: UInt32.self)
            let index = argument.load(fromByteOffset: 8, as: UInt32.self)
            let start = argument.load(fromByteOffset: 12, as: UInt32.self)
            let count = argument.load(fromByteOffset: 16, as: UInt32.self)
            if flags & UInt32(VFIO_IRQ_SET_DATA_EVENTFD) != 0 {
                let fds = (0..<Int(count)).map { argument.load(fromByteOffset: 20 + 4 * $0, as: Int32.self) }
                state.withLock { $0.irqTriggers[index] = fds }
            } else if flags & UInt32(VFIO_IRQ_SET_ACTION_UNMASK) != 0 {
                state.withLock { $0.unmasks += 1 }
            } else if count == 0 {
                state.withLock { _ = $0.irqTriggers.removeValue(forKey: index) }
            } else if let fd = state.withLock({ $0.irqTriggers[index]?[Int(start)] }) {
                fire(fd)
            }
            return 0
        case modeless_VFIO_IOMMU_MAP_DMA:
            if failing("VFIO_IOMMU_MAP_DMA") { return -1 }
            let map = argument.load(as: vfio_iommu_type1_dma_map.self)
            // Like type-1: a range overlapping an existing mapping is refused.
            return state.withLock { state in
                guard !state.iommu.contains(where: { $0.key < map.iova + map.size && map.iova < $0.key + $0.value }) else { return false }
                state.iommu[map.iova] = map.size
                return true
            } ? 0 : error(.fileExists)
        case modeless_VFIO_IOMMU_UNMAP_DMA:
            if failing("VFIO_IOMMU_UNMAP_DMA") { return -1 }
            let unmap = argument.load(as: vfio_iommu_type1_dma_unmap.self)
            if unmap.flags & UInt32(VFIO_DMA_UNMAP_FLAG_ALL) != 0 {
                state.withLock { $0.iommu.removeAll() }
                return 0
            }
            // Like type-1 v2: every mapping wholly inside the range goes; one cut by it is an error.
            let end = unmap.iova + unmap.size
            return state.withLock { state in
                let cut = state.iommu.contains { $0.key < end && $0.key + $0.value > unmap.iova && ($0.key < unmap.iova || $0.key + $0.value > end) }
                if cut { return false }
                state.iommu = state.iommu.filter { !($0.key >= unmap.iova && $0.key + $0.value <= end) }
                return true
            } ? 0 : error(.invalidArgument)
        default:
            return error(.invalidArgument)
        }
    }

    /// What the kernel does when the device interrupts: add one to the vector's eventfd.
    func fire(_ fd: Int32) {
        var one: UInt64 = 1
        _ = Glibc.write(fd, &one, 8)
    }

    /// Fires the eventfd registered for VFIO irq `index`, vector `vector`.
    func interrupt(index: UInt32, vector: Int = 0) -> Bool {
        guard let fd = state.withLock({ $0.irqTriggers[index]?[vector] }) else { return false }
        fire(fd)
        return true
    }

    func mmap(_ length: Int, _ protection: Int32, _ flags: Int32, _ fd: Int32, _ offset: Int64) -> UnsafeMutableRawPointer? {
        guard isFake(fd) else {
            let result = Glibc.mmap(nil, length, protection, flags, fd, Int(offset))
            return result == MAP_FAILED ? nil : result
        }
        if failing("mmap device") { return nil }
        guard UInt64(offset) == Self.regionOffset, length == Self.barSize,
              let memory = Glibc.mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              memory != MAP_FAILED else { _ = error(.invalidArgument); return nil }
        memory.storeBytes(of: UInt32(0x0100_00ed), as: UInt32.self)
        state.withLock { _ = $0.deviceMappings.insert(UInt(bitPattern: memory)) }
        return memory
    }

    func munmap(_ address: UnsafeMutableRawPointer, _ length: Int) -> Int32 {
        state.withLock { _ = $0.deviceMappings.remove(UInt(bitPattern: address)) }
        return Glibc.munmap(address, length)
    }

    var deviceMappingCount: Int { state.withLock { $0.deviceMappings.count } }

    func pread(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int, _ offset: Int64) -> Int {
        guard isFake(fd) else { return Glibc.pread(fd, buffer, count, Int(offset)) }
        let start = Int(UInt64(offset) - Self.configOffset)
        return state.withLock { state in
            guard start >= 0, start + count <= state.config.count else { state.lastErrno = .invalidArgument; return -1 }
            state.config.withUnsafeBytes { buffer.copyMemory(from: $0.baseAddress! + start, byteCount: count) }
            return count
        }
    }

    func pwrite(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int, _ offset: Int64) -> Int {
        guard isFake(fd) else { return Glibc.pwrite(fd, buffer, count, Int(offset)) }
        let start = Int(UInt64(offset) - Self.configOffset)
        return state.withLock { state in
            guard start >= 0, start + count <= state.config.count else { state.lastErrno = .invalidArgument; return -1 }
            state.config.withUnsafeMutableBytes { ($0.baseAddress! + start).copyMemory(from: buffer, byteCount: count) }
            return count
        }
    }

    func read(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int) -> Int { Glibc.read(fd, buffer, count) }
    func write(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Int { Glibc.write(fd, buffer, count) }
    func eventfd(_ initial: UInt32, _ flags: Int32) -> Int32 {
        if failing("eventfd") { return -1 }
        let fd = modeless_eventfd(initial, flags)
        if fd >= 0 { state.withLock { _ = $0.eventfds.insert(fd) } }
        return fd
    }
}
