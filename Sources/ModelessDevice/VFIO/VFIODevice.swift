import CModelessShim
import ModelessBus
import ModelessSystem
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A PCI function bound to vfio-pci, opened through its VFIO group.
///
/// Opening maps every memory BAR, finds the configuration space region and the interrupt
/// counts. DMA buffers are mapped into the device's IOMMU address space at addresses below
/// its DMA limit. ``close()`` (or `deinit`) releases everything in reverse order.
public final class VFIODevice: DeviceAccess, @unchecked Sendable {
    /// Choices made when opening a device.
    public struct Options: Sendable {
        /// How many address bits the device can drive for DMA (its DMA mask): device addresses
        /// are allocated below 2^bits. QEMU's edu device has 28.
        public var dmaAddressBits: Int

        /// Options with a 39-bit DMA mask.
        public init(dmaAddressBits: Int = 39) {
            self.dmaAddressBits = dmaAddressBits
        }
    }

    /// The device's PCI address.
    public let address: PCIAddress
    /// `vfio`.
    public let backendName = "vfio"
    /// The mapped memory BARs, by BAR number.
    public let regions: [Int: MMIORegion]
    /// The configuration space, through the VFIO device's config region.
    public let config: ConfigSpaceAccess
    /// Whether VFIO offers a reset for this device (`VFIO_DEVICE_FLAGS_RESET`).
    public let supportsReset: Bool
    /// The device request interrupt (`VFIO_PCI_REQ_IRQ_INDEX`), registered at open: the kernel
    /// signals it when it wants the device back (an unbind, a hot-unplug) and waits until the
    /// device is closed. `nil` only when the kernel offers no request interrupt, and, for a
    /// device adopted ahead (``adoptAhead(_:options:bus:system:)``), until ``takeOver(keepingBusMastering:)``.
    public private(set) var removal: DeviceRemoval?
    /// The device addresses of kept DMA memory (``allocateKeptDMA(size:)``): the top
    /// ``keptRegionSize`` below the DMA limit, outside every IOVA window, so that neither half
    /// of a handover nor an adoption's clearing of its own window touches it.
    public let keptRegion: Range<UInt64>
    /// The number of interrupt indexes VFIO reported (`VFIO_DEVICE_GET_INFO`'s `num_irqs`).
    let irqIndexCount: UInt32
    /// Whether the device was adopted ahead and still waits for ``takeOver(keepingBusMastering:)``.
    private(set) var awaitingTakeover = false
    /// Whether ``takeOver(keepingBusMastering:)`` removes every mapping (an adopted device whose holder's window
    /// left no room for its own): nothing may be mapped before it.
    private(set) var clearsEverythingAtTakeover = false

    /// Whether DMA memory may be mapped now: not between an adoption ahead whose window
    /// overlaps the holder's and ``takeOver(keepingBusMastering:)``.
    public var mapsDMA: Bool { !(awaitingTakeover && clearsEverythingAtTakeover) }
    let deviceFD: Int32
    let container: VFIOContainer
    let system: any SystemCalls
    let vectorCounts: [InterruptKind: Int]
    private let lifetime: MappingLifetime
    private let barMappings: [(UnsafeMutableRawPointer, Int)]
    let state: Mutex<State>
    /// Whether this device adopted descriptors a predecessor handed over (``VFIOHandover``)
    /// rather than opening the device.
    public private(set) var adopted = false
    /// When the device was ready (opened or adopted), CLOCK_MONOTONIC nanoseconds: for timing
    /// a takeover's steps.
    public private(set) var readyAt: UInt64 = 0
    /// Whether interrupts were enabled on the eventfds the holder of an adopted device had VFIO
    /// signal (handed over with its descriptors), without setting new ones.
    public internal(set) var keptHandedInterrupts = false
    /// How long an adoption's steps took (empty for a device opened anew).
    public private(set) var adoptionSteps = ""

    struct State: @unchecked Sendable {
        var isOpen = true
        var allocator: IOVAAllocator
        /// The device addresses this process maps DMA in (all below the DMA limit at first;
        /// half of them once the device is handed over, the other half for the successor).
        var window: Range<UInt64>
        /// The window an adopted device's predecessor mapped in, until ``VFIODevice/releasePredecessorMappings()``.
        var predecessorWindow: Range<UInt64>?
        var buffers: [UInt64: DMARecord] = [:]
        var interrupts: (kind: InterruptKind, notifiers: [EventNotifier])?
        /// The eventfds an adopted device's holder had VFIO signal (``VFIODescriptors/interruptFDs``),
        /// until interrupts are enabled: taken as they are for the same kind and count.
        var handedInterrupts: (kind: InterruptKind, notifiers: [EventNotifier])?
        /// INTx's unmask request, built when INTx was enabled; invalidated when it is disabled.
        var intxUnmask: INTxUnmaskRequest?
        /// The kept DMA memory an adopted device's holder handed over (``VFIODescriptors/kept``),
        /// until ``VFIODevice/inheritKeptDMA()`` maps it or the takeover or close closes it.
        var handedKept: VFIOKeptDMA?
    }

    /// VFIO's fixed region and interrupt indexes for PCI devices (linux/vfio.h).
    static let configRegionIndex: UInt32 = 7
    /// `VFIO_PCI_REQ_IRQ_INDEX`: the device request interrupt, one eventfd.
    static let requestIRQIndex: UInt32 = 4
    static func irqIndex(_ kind: InterruptKind) -> UInt32 {
        switch kind {
        case .intx: 0
        case .msi: 1
        case .msix: 2
        }
    }

    /// Opens the function at `address`, which must be bound to vfio-pci.
    public convenience init(_ address: PCIAddress, options: Options = Options(),
                            bus: PCIBus = PCIBus(), system: any SystemCalls = LinuxSystemCalls()) throws(DeviceError) {
        // Descriptors handed over: the driver and group links are all to check (the full
        // sysfs read below takes tens of ms in the VM, on the takeover's path).
        let functionPath = bus.path(of: address)
        if FileAccess.linkTargetName(functionPath + "/driver") == UserModeDriver.vfioPCI.rawValue,
           let group = FileAccess.linkTargetName(functionPath + "/iommu_group").flatMap({ Int($0) }),
           let handed = VFIOHandover.take(address) {
            var owned = false
            do throws(DeviceError) {
                guard handed.group == group else {
                    throw DeviceError(.system, address, "the handed-over descriptors are of IOMMU group \(handed.group), the device is in group \(group) now")
                }
                try self.init(address, adopting: handed, owned: &owned, options: options, system: system)
                try takeOver()
                return
            } catch {
                // The standby's fallback: the device opened anew, as without a handover.
                VFIOHandover.refuse(address, error.message)
                if !owned { handed.close(system) }
                _ = VFIOGroupRelease.wait(for: address, seconds: 10, bus: bus)
            }
        }
        VFIOHandover.withdraw(address)  // offered for a function no longer bound to vfio-pci: useless
        let device: PCIDevice
        do { device = try bus.device(at: address) } catch { throw DeviceError(.notBound, address, error.message) }
        guard device.driver == UserModeDriver.vfioPCI.rawValue, let group = device.iommuGroup else {
            throw DeviceError(.notBound, address,
                              "is bound to \(device.driver ?? "no driver"), not vfio-pci: run `sudo modeless bind \(address) --to vfio-pci`")
        }
        try self.init(address, group: group, options: options, system: system)
    }

    /// Adopts the descriptors another process opened the device with (``VFIOHandover``), the
    /// part that leaves the holder's use of the device alone: checks the container and group,
    /// re-reads the regions and interrupt counts, and clears the part of the address space the
    /// holder did not use (``windows(whole:predecessor:)``), where this device maps its own DMA
    /// from then on; the holder's mappings stay until ``releasePredecessorMappings()``.
    /// ``takeOver(keepingBusMastering:)`` does the rest once the holder is gone. `owned` tells whether the
    /// descriptors are this device's (closed with it, also when a later step failed) or still
    /// the caller's.
    convenience init(_ address: PCIAddress, adopting handed: VFIODescriptors, owned: inout Bool, options: Options = Options(),
                     system: any SystemCalls = LinuxSystemCalls()) throws(DeviceError) {
        let begun = monotonicNanoseconds()
        let container = try VFIOContainer(adopting: handed.container, groupFD: handed.groupFD, group: handed.group,
                                          device: address, system: system)
        do {
            try self.init(address, container: container, deviceFD: handed.device, registeringRequest: false, options: options, system: system)
        } catch {
            container.abandon()
            throw error
        }
        owned = true
        awaitingTakeover = true
        if let kind = handed.interruptKind, !handed.interruptFDs.isEmpty {
            let notifiers = handed.interruptFDs.map { EventNotifier(adopting: $0, system: system) }
            state.withLock { $0.handedInterrupts = (kind, notifiers) }
        }
        if let kept = handed.kept { state.withLock { $0.handedKept = kept } }
        let described = monotonicNanoseconds()
        let whole = state.withLock { $0.window }
        let (own, predecessor) = Self.windows(whole: whole, predecessor: handed.window)
        do throws(SystemError) {
            if let predecessor {
                // Usually empty: unless a predecessor two handovers back died before
                // releasing its mappings, which this window held.
                try container.unmap(range: own)
                state.withLock { $0.predecessorWindow = predecessor }
            } else {
                // No room beside the holder's window: everything goes, once the holder is gone.
                clearsEverythingAtTakeover = true
            }
        } catch {
            close()
            throw DeviceError(error, address)
        }
        state.withLock {
            $0.allocator = IOVAAllocator(start: own.lowerBound, limit: own.upperBound)
            $0.window = own
        }
        adopted = true
        let cleared = monotonicNanoseconds()
        adoptionSteps = "regions and interrupts \(millisecondsText(described - begun)) ms, "
            + "\(predecessor == nil ? "no room beside the holder's window" : "own window cleared") \(millisecondsText(cleared - described)) ms"
    }

    /// Adopts, ahead of its holder's end, the descriptors offered for `address` (``VFIOHandover/offer(_:)``):
    /// everything that leaves the holder's use of the device alone (the checks, the regions,
    /// BARs and interrupt counts, this process's own IOVA window, in which it may then map DMA
    /// memory), so that once the holder is gone only ``takeOver(keepingBusMastering:)`` remains. Nil when nothing
    /// was offered, or when the descriptors could not be adopted (the reason is kept for
    /// ``VFIOHandover/refusal(for:)``, the descriptors are closed, and the device is then
    /// opened anew as without a handover).
    ///
    /// Only a process whose holder has released its own predecessor's mappings may call this
    /// (the holder offers its descriptors only from then on): this device's window is that
    /// predecessor's.
    public static func adoptAhead(_ address: PCIAddress, options: Options = Options(), bus: PCIBus = PCIBus(),
                                  system: any SystemCalls = LinuxSystemCalls()) -> VFIODevice? {
        let functionPath = bus.path(of: address)
        guard let handed = VFIOHandover.take(address) else { return nil }
        var owned = false
        do throws(DeviceError) {
            guard FileAccess.linkTargetName(functionPath + "/driver") == UserModeDriver.vfioPCI.rawValue,
                  let group = FileAccess.linkTargetName(functionPath + "/iommu_group").flatMap({ Int($0) }) else {
                throw DeviceError(.notBound, address, "is no longer bound to vfio-pci")
            }
            guard handed.group == group else {
                throw DeviceError(.system, address, "the handed-over descriptors are of IOMMU group \(handed.group), the device is in group \(group) now")
            }
            return try VFIODevice(address, adopting: handed, owned: &owned, options: options, system: system)
        } catch {
            VFIOHandover.refuse(address, error.message)
            if !owned { handed.close(system) }
            return nil
        }
    }

    /// Completes an adoption once the holder is gone: turns bus mastering off (the device may
    /// still be running the dead holder's queues), removes every mapping when this device's
    /// window had no room beside the holder's, and registers this process's device request
    /// interrupt. The driver then starts as on a fresh open, without vfio-pci's enable and
    /// function reset. With `keepingBusMastering` the command register is left alone: the
    /// device goes on running the predecessor's queues (in kept DMA memory, inherited before
    /// with ``inheritKeptDMA()``), whose driver resumes them. Kept memory handed over and not
    /// inherited by then is closed (its IOMMU mapping stays until the next
    /// ``allocateKeptDMA(size:)``). On failure the device is closed. Does nothing for a device
    /// opened anew.
    public func takeOver(keepingBusMastering: Bool = false) throws(DeviceError) {
        guard awaitingTakeover else { return }
        awaitingTakeover = false
        let begun = monotonicNanoseconds()
        var quiet: UInt64 = 0
        do throws(DeviceError) {
            try checkOpen()
            if let kept = state.withLock({ state in defer { state.handedKept = nil }; return state.handedKept }) {
                _ = system.close(kept.fd)
            }
            if !keepingBusMastering { try config.setCommand(.busMaster, false) }
            // The holder is gone: kept memory inherited ahead is this device's alone now.
            state.withLock { state in
                for (address, var record) in state.buffers where record.holderMayUse {
                    record.holderMayUse = false
                    state.buffers[address] = record
                }
            }
            quiet = monotonicNanoseconds()
            if clearsEverythingAtTakeover {
                // Own DMA made ahead would go with the holder's mappings: none may exist.
                guard state.withLock({ $0.buffers.isEmpty }) else {
                    throw DeviceError(.system, address, "DMA memory was mapped ahead in a window the holder shares")
                }
                do { try container.unmapAll() } catch { throw DeviceError(error, address) }
            }
            removal = try Self.registerRequest(deviceFD, irqCount: irqIndexCount, address, system)
        } catch {
            close()
            throw error
        }
        readyAt = monotonicNanoseconds()
        adoptionSteps += (adoptionSteps.isEmpty ? "" : ", ") + (keepingBusMastering ? "bus mastering kept" : "bus mastering off")
            + " \(millisecondsText(quiet - begun)) ms, request interrupt \(millisecondsText(readyAt - quiet)) ms"
    }

    /// Where an adopted device maps its DMA: the larger part of `whole` that the predecessor's
    /// window leaves free, with that window to release later; or, when the predecessor's window
    /// leaves less than a quarter of `whole`, the lower half of it, every mapping removed first
    /// (nil: nothing to release later).
    static func windows(whole: Range<UInt64>, predecessor: Range<UInt64>) -> (own: Range<UInt64>, predecessor: Range<UInt64>?) {
        let below = whole.lowerBound..<max(whole.lowerBound, min(whole.upperBound, predecessor.lowerBound))
        let above = min(whole.upperBound, max(whole.lowerBound, predecessor.upperBound))..<whole.upperBound
        let larger = below.byteCount >= above.byteCount ? below : above
        if larger.byteCount >= whole.byteCount / 4 { return (larger, predecessor) }
        return (whole.lowerBound..<(whole.lowerBound + whole.byteCount / 2), nil)
    }

    /// Removes the IOMMU mappings the predecessor of an adopted device left in its window
    /// (unpinning its memory): once this process serves, since the container is locked while
    /// the kernel unmaps, which would hold up this process's own mappings. Returns how long it
    /// took, or nil when there is nothing to release.
    public func releasePredecessorMappings() throws(DeviceError) -> UInt64? {
        try checkOpen()
        guard let window = state.withLock({ $0.predecessorWindow }) else { return nil }
        let start = monotonicNanoseconds()
        do { try container.unmap(range: window) } catch { throw DeviceError(error, address) }
        state.withLock { $0.predecessorWindow = nil }
        return monotonicNanoseconds() - start
    }

    /// The descriptors to hand to a successor (``VFIOHandoverServer``), with the kept DMA
    /// memory live now (``allocateKeptDMA(size:)``: allocate it first). From then on closing
    /// this device does not detach its group from the container, which the successor holds.
    public func handoverDescriptors() throws(DeviceError) -> VFIODescriptors {
        try checkOpen()
        container.isShared = true
        // A device that maps in every address keeps to the lower half from now on (when none
        // of its buffers is above it, kept memory aside), so that a successor can map in the
        // upper half.
        let window = state.withLock { state in
            let whole = state.window
            let half = whole.lowerBound..<(whole.lowerBound + whole.byteCount / 2)
            if state.predecessorWindow == nil, !adopted,
               state.buffers.allSatisfy({ $0.value.memfd >= 0 || $0.key + UInt64($0.value.length) <= half.upperBound }) {
                state.allocator.restrict(to: half)
                state.window = half
            }
            return state.window
        }
        var descriptors = VFIODescriptors(address: address, group: container.group, container: container.containerFD,
                                          groupFD: container.groupFD, device: deviceFD, window: window)
        if let enabled = state.withLock({ $0.interrupts }), enabled.kind != .intx {
            descriptors.interruptKind = enabled.kind
            descriptors.interruptFDs = enabled.notifiers.map(\.fd)
        }
        descriptors.kept = state.withLock { state in
            state.buffers.first { $0.value.memfd >= 0 }.map { VFIOKeptDMA(fd: $0.value.memfd, deviceAddress: $0.key, size: $0.value.length) }
        }
        return descriptors
    }

    /// Opens the function at `address` through VFIO group `group`.
    public convenience init(_ address: PCIAddress, group: Int, options: Options = Options(),
                system: any SystemCalls = LinuxSystemCalls()) throws(DeviceError) {
        let container = try VFIOContainer(group: group, device: address, system: system)
        try self.init(address, container: container, deviceFD: nil, registeringRequest: true, options: options, system: system)
    }

    /// Opens the device through `container` (or takes `deviceFD`, already open), maps its
    /// BARs and reads its regions and interrupts; registers the device request interrupt when
    /// `registeringRequest`. On failure closes the device and the container, except an
    /// adopted `deviceFD`, which the caller still owns.
    private init(_ address: PCIAddress, container: VFIOContainer, deviceFD adoptedFD: Int32?, registeringRequest: Bool,
                 options: Options, system: any SystemCalls) throws(DeviceError) {
        self.address = address
        self.system = system
        var deviceFD: Int32 = adoptedFD ?? -1
        var mappings: [(UnsafeMutableRawPointer, Int)] = []
        let lifetime = MappingLifetime()
        do throws(DeviceError) {
            if adoptedFD == nil { deviceFD = try container.openDevice(address) }
            var info = vfio_device_info()
            info.argsz = UInt32(MemoryLayout<vfio_device_info>.size)
            do {
                _ = try system.ioctl(deviceFD, modeless_VFIO_DEVICE_GET_INFO, &info, "VFIO_DEVICE_GET_INFO", "\(address)")
            } catch { throw DeviceError(error, address) }
            supportsReset = info.flags & UInt32(VFIO_DEVICE_FLAGS_RESET) != 0

            var regions: [Int: MMIORegion] = [:]
            for index in 0..<min(6, Int(info.num_regions)) {
                let region = try Self.regionInfo(deviceFD, UInt32(index), address, system)
                guard region.size > 0 else { continue }
                let size = Int(region.size)
                if region.flags & UInt32(VFIO_REGION_INFO_FLAG_MMAP) != 0 {
                    let base: UnsafeMutableRawPointer
                    do {
                        base = try system.map(size, protection: PROT_READ | PROT_WRITE, flags: MAP_SHARED,
                                              fd: deviceFD, offset: Int64(region.offset), "\(address) BAR\(index)")
                    } catch { throw DeviceError(error, address) }
                    mappings.append((base, size))
                    regions[index] = MMIORegion(index: index, size: size, device: address,
                                                backing: .mapped(base, lifetime: lifetime))
                } else {
                    let file = RegionFile(fd: deviceFD, base: Int64(region.offset), name: "\(address) BAR\(index)", system: system)
                    regions[index] = MMIORegion(index: index, size: size, device: address, backing: .file(file))
                }
            }
            self.regions = regions

            let configRegion = try Self.regionInfo(deviceFD, Self.configRegionIndex, address, system)
            config = ConfigSpaceAccess(device: address, size: Int(min(configRegion.size, 4096)),
                                       file: RegionFile(fd: deviceFD, base: Int64(configRegion.offset),
                                                        name: "\(address) config space", system: system))
            var counts: [InterruptKind: Int] = [:]
            for kind in InterruptKind.allCases where Self.irqIndex(kind) < info.num_irqs {
                var irq = vfio_irq_info()
                irq.argsz = UInt32(MemoryLayout<vfio_irq_info>.size)
                irq.index = Self.irqIndex(kind)
                do {
                    _ = try system.ioctl(deviceFD, modeless_VFIO_DEVICE_GET_IRQ_INFO, &irq, "VFIO_DEVICE_GET_IRQ_INFO", "\(address)")
                } catch { throw DeviceError(error, address) }
                counts[kind] = Int(irq.count)
            }
            vectorCounts = counts
            irqIndexCount = info.num_irqs
            removal = registeringRequest ? try Self.registerRequest(deviceFD, irqCount: info.num_irqs, address, system) : nil
        } catch {
            lifetime.end()
            for (base, size) in mappings { _ = system.munmap(base, size) }
            if adoptedFD == nil {
                if deviceFD >= 0 { _ = system.close(deviceFD) }
                container.close()
            }
            throw error
        }
        self.deviceFD = deviceFD
        self.container = container
        self.lifetime = lifetime
        self.barMappings = mappings
        var allocator = IOVAAllocator(addressBits: options.dmaAddressBits)
        let whole = allocator.free[0]
        keptRegion = Self.keptRegion(below: whole)
        let window = whole.lowerBound..<keptRegion.lowerBound
        allocator.restrict(to: window)
        state = Mutex(State(allocator: allocator, window: window))
        readyAt = monotonicNanoseconds()
    }

    deinit { close() }

    private static func regionInfo(_ fd: Int32, _ index: UInt32, _ address: PCIAddress,
                                   _ system: any SystemCalls) throws(DeviceError) -> vfio_region_info {
        var region = vfio_region_info()
        region.argsz = UInt32(MemoryLayout<vfio_region_info>.size)
        region.index = index
        do {
            _ = try system.ioctl(fd, modeless_VFIO_DEVICE_GET_REGION_INFO, &region, "VFIO_DEVICE_GET_REGION_INFO", "\(address) region \(index)")
        } catch { throw DeviceError(error, address) }
        return region
    }

    /// Registers a new ``DeviceRemoval``'s eventfd as the device request interrupt, so that
    /// the kernel's unbind or hot-unplug reaches the driver instead of blocking until the
    /// process exits ("No device request channel registered"). `nil` when the kernel offers none.
    private static func registerRequest(_ deviceFD: Int32, irqCount: UInt32, _ address: PCIAddress,
                                        _ system: any SystemCalls) throws(DeviceError) -> DeviceRemoval? {
        guard requestIRQIndex < irqCount else { return nil }
        var irq = vfio_irq_info()
        irq.argsz = UInt32(MemoryLayout<vfio_irq_info>.size)
        irq.index = requestIRQIndex
        do throws(SystemError) {
            _ = try system.ioctl(deviceFD, modeless_VFIO_DEVICE_GET_IRQ_INFO, &irq, "VFIO_DEVICE_GET_IRQ_INFO", "\(address) request")
            guard irq.count > 0 else { return nil }
            let removal = try DeviceRemoval(system: system)
            do throws(SystemError) {
                try setIRQs(deviceFD, system: system, address: address, index: requestIRQIndex, "request interrupt",
                            flags: UInt32(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER),
                            start: 0, count: 1, fds: [removal.fd])
            } catch {
                removal.letGo()
                throw error
            }
            return removal
        } catch { throw DeviceError(error, address) }
    }

    /// How many vectors of `kind` VFIO offers for this device.
    public func vectorCount(_ kind: InterruptKind) -> Int { vectorCounts[kind] ?? 0 }

    /// Resets the device through VFIO (`VFIO_DEVICE_RESET`); unsupported where ``supportsReset`` is false.
    public func reset() throws(DeviceError) {
        guard supportsReset else { throw DeviceError(.unsupported, address, "does not support a function reset") }
        try checkOpen()
        do {
            _ = try system.ioctl(deviceFD, modeless_VFIO_DEVICE_RESET, value: 0, "VFIO_DEVICE_RESET", "\(address)")
        } catch { throw DeviceError(error, address) }
    }

    func checkOpen() throws(DeviceError) {
        guard state.withLock({ $0.isOpen }) else { throw DeviceError(.closed, address, "the device was closed") }
    }

    /// Disables interrupts, unmaps every DMA buffer and BAR and closes the device (its group and
    /// container close with the last device using them). Idempotent.
    public func close() {
        let wasOpen = state.withLock { state in
            defer { state.isOpen = false }
            return state.isOpen
        }
        guard wasOpen else { return }
        state.withLock { state in
            defer { state.handedInterrupts = nil }
            return state.handedInterrupts
        }?.notifiers.forEach { $0.close() }
        if let kept = state.withLock({ state in defer { state.handedKept = nil }; return state.handedKept }) {
            _ = system.close(kept.fd)
        }
        try? disableInterruptsUnchecked()
        if removal != nil {
            // The kernel stops signalling the eventfd; the eventfd closes once no watcher holds it.
            try? setIRQs(index: Self.requestIRQIndex, "request interrupt",
                         flags: UInt32(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER), start: 0, count: 0, fds: [])
            removal?.letGo()
        }
        let buffers = state.withLock { state in
            defer { state.buffers.removeAll() }
            return state.buffers
        }
        for (iova, record) in buffers {
            record.buffer?.invalidate()
            if !record.holderMayUse { try? container.unmapDMA(iova: iova, size: UInt64(record.length)) }
            _ = system.munmap(record.base, record.length)
            if record.memfd >= 0 { _ = system.close(record.memfd) }
        }
        lifetime.end()
        for (base, size) in barMappings { _ = system.munmap(base, size) }
        _ = system.close(deviceFD)
        container.close()
    }
}
