import ModelessBus
import ModelessSystem
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A PCI function bound to uio_pci_generic: BARs mapped from sysfs `resourceN`, configuration
/// space through sysfs `config`, INTx through `/dev/uioN`.
///
/// UIO gives no DMA isolation: the device can write anywhere in memory. DMA buffers are
/// therefore refused unless ``Options/allowUnisolatedDMA`` is set, and then come from locked
/// pages whose physical addresses are read from `/proc/self/pagemap` (root only).
public final class UIODevice: DeviceAccess, @unchecked Sendable {
    /// Choices made when opening a device.
    public struct Options: Sendable {
        /// Allow DMA without an IOMMU. The device then reaches all of memory: use only with a
        /// device and driver you trust.
        public var allowUnisolatedDMA: Bool
        /// The device's DMA address width: without an IOMMU, buffers must lie physically below 2^bits.
        public var dmaAddressBits: Int

        /// Options with DMA refused and a 64-bit DMA mask.
        public init(allowUnisolatedDMA: Bool = false, dmaAddressBits: Int = 64) {
            self.allowUnisolatedDMA = allowUnisolatedDMA
            self.dmaAddressBits = dmaAddressBits
        }
    }

    /// The device's PCI address.
    public let address: PCIAddress
    /// `uio`.
    public let backendName = "uio"
    /// The mapped memory BARs, by BAR number.
    public let regions: [Int: MMIORegion]
    /// The configuration space, through sysfs's `config` file.
    public let config: ConfigSpaceAccess
    /// The UIO node, `/dev/uioN`.
    public let node: String
    /// UIO has no device request channel: this reports the kernel's unbind or removal events
    /// after the fact, as a surprise removal (`UIORemovalFollower`); nil without event access.
    public var removal: DeviceRemoval? { removalFollower?.removal }
    private let removalFollower: UIORemovalFollower?
    let options: Options
    let system: any SystemCalls
    let uioFD: Int32
    let hasINTx: Bool
    /// The UIO node's event counter in sysfs: interrupts since the driver was bound.
    private let eventPath: String
    private let resetPath: String
    private let lifetime = MappingLifetime()
    private let descriptors: [Int32]
    private let barMappings: [(UnsafeMutableRawPointer, Int)]
    let state = Mutex(State())


    struct State: @unchecked Sendable {
        var isOpen = true
        var buffers: [UInt64: DMARecord] = [:]
        var interruptsEnabled = false
        /// The interrupt counter of the vector handed out, invalidated when interrupts are
        /// disabled or the device closed.
        var counter: UIOInterruptCounter?
    }

    /// Opens the function at `address`, which must be bound to uio_pci_generic.
    public init(_ address: PCIAddress, options: Options = Options(), bus: PCIBus = PCIBus(),
                system: any SystemCalls = LinuxSystemCalls()) throws(DeviceError) {
        self.address = address
        self.options = options
        self.system = system
        let device: PCIDevice
        do { device = try bus.device(at: address) } catch { throw DeviceError(.notBound, address, error.message) }
        let directory = bus.path(of: address)
        guard device.driver == UserModeDriver.uioPCIGeneric.rawValue,
              let uio = (try? FileAccess.listDirectory("\(directory)/uio"))?.first else {
            throw DeviceError(.notBound, address,
                              "is bound to \(device.driver ?? "no driver"), not uio_pci_generic: run `sudo modeless bind \(address) --to uio_pci_generic`")
        }
        node = "/dev/\(uio)"
        eventPath = "\(directory)/uio/\(uio)/event"
        hasINTx = device.interrupts.intxPin != 0
        resetPath = "\(directory)/reset"

        var descriptors: [Int32] = []
        var mappings: [(UnsafeMutableRawPointer, Int)] = []
        do throws(SystemError) {
            let uioFD = try system.openFile(node, O_RDWR)
            descriptors.append(uioFD)
            self.uioFD = uioFD
            let configPath = "\(directory)/config"
            let configFD = try system.openFile(configPath, O_RDWR)
            descriptors.append(configFD)
            let configSize = (try? FileAccess.readBytes(configPath, limit: 4096).count) ?? 256
            config = ConfigSpaceAccess(device: address, size: configSize >= 4096 ? 4096 : 256,
                                       file: RegionFile(fd: configFD, base: 0, name: configPath, system: system))
            var regions: [Int: MMIORegion] = [:]
            for bar in device.bars {
                let path = "\(directory)/resource\(bar.index)"
                let fd = try system.openFile(path, O_RDWR | O_SYNC)
                if bar.space == .memory {
                    defer { _ = system.close(fd) }  // The mapping outlives the descriptor.
                    let base = try system.map(Int(bar.size), protection: PROT_READ | PROT_WRITE, flags: MAP_SHARED,
                                              fd: fd, offset: 0, path)
                    mappings.append((base, Int(bar.size)))
                    regions[bar.index] = MMIORegion(index: bar.index, size: Int(bar.size), device: address,
                                                    backing: .mapped(base, lifetime: lifetime))
                } else {
                    descriptors.append(fd)
                    regions[bar.index] = MMIORegion(index: bar.index, size: Int(bar.size), device: address,
                                                    backing: .file(RegionFile(fd: fd, base: 0, name: path, system: system)))
                }
            }
            self.regions = regions
        } catch {
            lifetime.end()
            for (base, size) in mappings { _ = system.munmap(base, size) }
            for fd in descriptors.reversed() { _ = system.close(fd) }
            throw DeviceError(error, address)
        }
        self.descriptors = descriptors
        self.barMappings = mappings
        removalFollower = UIORemovalFollower(address, system: system)
    }

    deinit { close() }

    /// 1 for INTx if the device has an interrupt pin, else 0: UIO offers nothing else.
    public func vectorCount(_ kind: InterruptKind) -> Int { kind == .intx && hasINTx ? 1 : 0 }

    /// Enables the INTx vector, signalled through `/dev/uioN`; any other kind is unsupported.
    public func enableInterrupts(_ kind: InterruptKind, count: Int) throws(DeviceError) -> [InterruptVector] {
        try checkOpen()
        guard kind == .intx, count == 1, hasINTx else {
            throw DeviceError(.unsupported, address,
                              "UIO delivers only INTx (1 vector)\(hasINTx ? "" : ", and this device has no INTx pin"); bind to vfio-pci for MSI or MSI-X")
        }
        // The node counts every interrupt since the bind, earlier runs' included: count from now.
        let start: UInt32
        do {
            let text = try FileAccess.readText(eventPath)
            guard let value = text.split(whereSeparator: \.isWhitespace).first.flatMap({ UInt32($0) }) else {
                throw DeviceError(.unsupported, address, "\(eventPath) holds \"\(text)\", not an interrupt count")
            }
            start = value
        } catch let error as DeviceError {
            throw error
        } catch {
            throw DeviceError(.system, address, "cannot read the interrupt count at \(eventPath): \(error)")
        }
        let counter = UIOInterruptCounter(fd: uioFD, node: node, address: address, system: system, start: start)
        state.withLock {
            $0.counter?.invalidate()
            $0.counter = counter
        }
        try config.setINTxDisabled(false)
        state.withLock { $0.interruptsEnabled = true }
        return [InterruptVector(
            kind: .intx, index: 0, fd: uioFD, device: address,
            wait: { () throws(DeviceError) -> UInt64 in try counter.wait() },
            acknowledge: { [config] () throws(DeviceError) in
                // uio_pci_generic masked INTx by setting the command register's INTx-disable bit.
                try counter.checkValid()
                try config.setINTxDisabled(false)
            },
            trigger: nil)]
    }

    /// Disables INTx (the command register's interrupt-disable bit) and stops listening.
    public func disableInterrupts() throws(DeviceError) {
        try checkOpen()
        guard state.withLock({ state in
            defer {
                state.interruptsEnabled = false
                state.counter?.invalidate()
                state.counter = nil
            }
            return state.interruptsEnabled
        }) else { return }
        try config.setINTxDisabled(true)
    }

    /// Resets the device through sysfs's `reset` file, where the kernel offers one.
    public func reset() throws(DeviceError) {
        try checkOpen()
        guard FileAccess.exists(resetPath) else { throw DeviceError(.unsupported, address, "does not support a function reset") }
        do { try FileAccess.writeText("1", to: resetPath) } catch { throw DeviceError(error, address) }
    }

    func checkOpen() throws(DeviceError) {
        guard state.withLock({ $0.isOpen }) else { throw DeviceError(.closed, address, "the device was closed") }
    }

    /// Disables interrupts, unmaps every BAR and DMA buffer and closes the device's files. Idempotent.
    public func close() {
        let wasOpen = state.withLock { state in defer { state.isOpen = false }; return state.isOpen }
        guard wasOpen else { return }
        if state.withLock({ $0.interruptsEnabled }) { try? config.setINTxDisabled(true) }
        state.withLock { $0.counter?.invalidate() }
        let buffers = state.withLock { state in defer { state.buffers.removeAll() }; return state.buffers }
        for record in buffers.values {
            record.buffer?.invalidate()
            _ = system.munmap(record.base, record.length)
        }
        lifetime.end()
        for (base, size) in barMappings { _ = system.munmap(base, size) }
        for fd in descriptors.reversed() { _ = system.close(fd) }
        removalFollower?.stop()
    }
}

/// `/dev/uioN`'s interrupt count, read by the one wait thread: how many interrupts arrived
/// since the last read, counted from the node's count when interrupts were enabled (the node
/// counts from the bind, so a fresh run would otherwise take earlier runs' interrupts as its
/// own). Reading allocates nothing and retains nothing unless it fails.
final class UIOInterruptCounter: @unchecked Sendable {
    private let fd: Int32
    private let node: String
    private let address: PCIAddress
    private let system: any SystemCalls
    /// The count last read; only the wait thread touches it (behind a pointer: no exclusivity check).
    private let last = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
    private let valid = Atomic<Bool>(true)

    init(fd: Int32, node: String, address: PCIAddress, system: any SystemCalls, start: UInt32) {
        self.fd = fd
        self.node = node
        self.address = address
        self.system = system
        last.initialize(to: start)
    }

    deinit { last.deallocate() }

    /// Interrupts were disabled or the device closed: the descriptor may be reused.
    func invalidate() { valid.store(false, ordering: .releasing) }

    func checkValid() throws(DeviceError) {
        guard valid.load(ordering: .acquiring) else {
            throw DeviceError(.closed, address, "interrupts were disabled or the device closed")
        }
    }

    /// Blocks until an interrupt; returns how many arrived since the last read.
    func wait() throws(DeviceError) -> UInt64 {
        try checkValid()
        var total: UInt32 = 0
        while true {
            let result = withUnsafeMutableBytes(of: &total) { system.read(fd, $0.baseAddress!, 4) }
            if result == 4 { break }
            guard result < 0 else {
                throw DeviceError(.system, address, "read \(node): \(result) bytes instead of a 4-byte interrupt count")
            }
            let error = system.lastError()
            if error == .interrupted { continue }
            throw DeviceError(SystemError("read", node, errno: error), address)
        }
        defer { last.pointee = total }
        return UInt64(total &- last.pointee)
    }
}
