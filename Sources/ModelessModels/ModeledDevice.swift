import ModelessBus
import ModelessDevice
import ModelessSystem
import Synchronization

/// A device model behind `DeviceAccess`: a driver opened on it cannot tell it from a VFIO
/// device, which is how drivers are unit-tested on any machine.
///
/// Interrupts behave as on hardware: MSI vectors are edges, each raise one notification;
/// INTx is a level, delivered once and masked until the driver acknowledges it, and delivered
/// again at that point if the device still asserts it. Faults can be injected at any time.
public final class ModeledDevice: DeviceAccess, @unchecked Sendable {
    /// The address given at init (0000:00:03.0 by default): the model is on no bus, this names it in messages.
    public let address: PCIAddress
    /// `model`.
    public let backendName = "model"
    /// The model's BARs as regions whose accesses call the model.
    public let regions: [Int: MMIORegion]
    /// The model's configuration space.
    public let config: ConfigSpaceAccess
    /// The model behind the device.
    public let model: any DeviceModel
    /// The removal channel, as VFIO's request interrupt: ``requestRemoval()`` stands in for
    /// the kernel's unbind or hot-unplug; drivers report a surprise removal on it.
    public let removal: DeviceRemoval?
    let context: ModelContext
    private let memory: ModelMemory
    private let worker: ModelWorker
    private let lock = ConditionLock()
    private let configSpace: ModelConfigSpace
    private var faultsValue = ModelFaults()
    private var enabled: (kind: InterruptKind, notifiers: [EventNotifier])?
    private var intxAsserted = false
    private var intxMasked = false
    private var isOpen = true
    private let accesses = Atomic<Int>(0)
    /// The thread ``registerAccesses(during:counted:)`` watches (0: none), checked on every
    /// access before anything else is.
    private let watchedThread = Atomic<UInt>(0)
    private let watch = Mutex<Watch?>(nil)

    /// Opens `model` as the device at `address`, with DMA addresses below 2^`dmaAddressBits`.
    public init(_ model: any DeviceModel, address: PCIAddress = PCIAddress("0000:00:03.0")!,
                dmaAddressBits: Int = 39) throws(DeviceError) {
        self.address = address
        self.model = model
        memory = ModelMemory(addressBits: dmaAddressBits)
        do {
            worker = try ModelWorker()
            removal = try DeviceRemoval()
        } catch { throw DeviceError(error, address) }
        context = ModelContext(memory: memory, worker: worker)
        configSpace = ModelConfigSpace(model.initialConfigSpace)
        config = .emulated(device: address, size: 256, backing: configSpace)
        var regions: [Int: MMIORegion] = [:]
        let bars = model.barSizes
        for (index, size) in bars {
            regions[index] = .emulated(index: index, size: size, device: address, registers: BARRegisters(bar: index))
        }
        self.regions = regions
        configSpace.device = self
        for region in regions.values { (region.registers as? BARRegisters)?.device = self }
        context.device = self
        model.connect(context)
    }

    deinit { close() }

    /// The faults in effect; set them to inject.
    public var faults: ModelFaults {
        get { lock.withLock { faultsValue } }
        set {
            lock.withLock { faultsValue = newValue }
            configSpace.surpriseRemoved = newValue.surpriseRemoved
        }
    }

    /// What the kernel does on an unbind or a hot-unplug of a VFIO device: asks the driver,
    /// through the request interrupt, to release the device. The device keeps answering until
    /// it is closed (set ``faults`` to pull it out as well).
    public func requestRemoval() { removal?.request() }

    var busMasterEnabled: Bool { configSpace.command & 0x4 != 0 }

    // MARK: Registers

    /// How many BAR register reads and writes the driver made so far, from any thread, those
    /// of a removed device (all-ones reads, dropped writes) included.
    public var registerAccesses: Int { accesses.load(ordering: .relaxed) }

    /// Runs `body` and returns how many BAR register reads and writes the calling thread made
    /// in it while `counted` held (not the driver's other threads meanwhile): how a test checks
    /// that a call failed without touching the device, so without waiting on it. `counted`
    /// leaves out what else runs on the thread, e.g. `{ runtime.currentContext == .passive }`
    /// leaves out the ISRs and DPCs kernel emulation runs on it. One watch at a time.
    public func registerAccesses(during body: () throws -> Void,
                                 counted: @escaping @Sendable () -> Bool = { true }) rethrows -> Int {
        watch.withLock { $0 = Watch(counted: counted) }
        watchedThread.store(SystemThread.currentIdentity, ordering: .releasing)
        defer {
            watchedThread.store(0, ordering: .releasing)
            watch.withLock { $0 = nil }
        }
        try body()
        return watch.withLock { $0?.accesses ?? 0 }
    }

    private struct Watch {
        let counted: @Sendable () -> Bool
        var accesses = 0
    }

    private func countAccess() {
        accesses.add(1, ordering: .relaxed)
        let watched = watchedThread.load(ordering: .acquiring)
        guard watched != 0, watched == SystemThread.currentIdentity,
              let counted = watch.withLock({ $0?.counted }), counted() else { return }
        watch.withLock { $0?.accesses += 1 }
    }

    func read(bar: Int, offset: Int, width: Int) -> UInt64 {
        countAccess()
        if faults.surpriseRemoved { return width == 8 ? .max : (1 << (width * 8)) - 1 }
        return model.read(bar: bar, offset: offset, width: width)
    }

    func write(bar: Int, offset: Int, width: Int, value: UInt64) {
        countAccess()
        if faults.surpriseRemoved { return }
        model.write(bar: bar, offset: offset, width: width, value: value)
    }

    // MARK: Interrupts

    /// How many vectors of `kind` the model offers.
    public func vectorCount(_ kind: InterruptKind) -> Int { model.vectorCounts[kind] ?? 0 }

    /// Enables `count` vectors of `kind`, each signalled on its own eventfd as VFIO signals them.
    public func enableInterrupts(_ kind: InterruptKind, count: Int) throws(DeviceError) -> [InterruptVector] {
        guard lock.withLock({ isOpen }) else { throw DeviceError(.closed, address, "the device was closed") }
        guard count > 0, count <= vectorCount(kind) else {
            throw DeviceError(.unsupported, address, "offers \(vectorCount(kind)) \(kind) vector(s); \(count) requested")
        }
        try disableInterrupts()
        var notifiers: [EventNotifier] = []
        do {
            for _ in 0..<count { notifiers.append(try EventNotifier()) }
        } catch {
            notifiers.forEach { $0.close() }
            throw DeviceError(error, address)
        }
        lock.withLock {
            enabled = (kind, notifiers)
            intxMasked = false
        }
        return notifiers.enumerated().map { index, notifier in
            InterruptVector(
                kind: kind, index: index, fd: notifier.fd, deliversOnEventfd: true, device: address,
                wait: { [address] () throws(DeviceError) -> UInt64 in
                    do throws(SystemError) { return try notifier.wait() } catch { throw DeviceError(error, address) }
                },
                acknowledge: { [weak self] () throws(DeviceError) in self?.acknowledge(kind: kind, vector: index) },
                trigger: { [weak self] () throws(DeviceError) in self?.raise(vector: index) })
        }
    }

    /// Disables the enabled vectors and closes their eventfds.
    public func disableInterrupts() throws(DeviceError) {
        let previous = lock.withLock { () -> [EventNotifier] in
            defer { enabled = nil }
            return enabled?.notifiers ?? []
        }
        previous.forEach { $0.close() }
    }

    func raise(vector: Int) {
        lock.withLock {
            guard isOpen, !faultsValue.surpriseRemoved, let enabled, vector < enabled.notifiers.count else { return }
            if enabled.kind == .intx {
                intxAsserted = true
                guard !intxMasked, configSpace.command & 0x400 == 0 else { return }
                intxMasked = true
            }
            try? enabled.notifiers[vector].signal()
        }
    }

    var enabledInterruptKind: InterruptKind? { lock.withLock { enabled?.kind } }

    func lower() {
        lock.withLock { intxAsserted = false }
    }

    private func acknowledge(kind: InterruptKind, vector: Int) {
        lock.withLock {
            guard let enabled, isOpen, !faultsValue.surpriseRemoved else { return }
            if kind == .intx {
                intxMasked = false
                guard intxAsserted || faultsValue.stuckInterrupt else { return }
                intxMasked = true
                try? enabled.notifiers[0].signal()
            } else if faultsValue.stuckInterrupt {
                try? enabled.notifiers[vector].signal()
            }
        }
    }

    // MARK: DMA, reset, close

    /// Allocates a DMA buffer of at least `size` bytes that the model reaches by its device address.
    public func allocateDMA(size: Int) throws(DeviceError) -> DMABuffer {
        guard size > 0 else { throw DeviceError(.outOfRange, address, "DMA buffer size must be positive, not \(size)") }
        guard let (base, deviceAddress, length) = memory.allocate(size: size) else {
            throw DeviceError(.outOfDeviceAddresses, address, "no device address range of \(size) bytes is left below the DMA limit")
        }
        return DMABuffer(size: length, deviceAddress: deviceAddress, device: address, base: base) { [memory] buffer in
            memory.release(buffer.deviceAddress)
        }
    }

    /// How many DMA buffers are allocated and not yet released, for leak checks in tests.
    public var liveDMABufferCount: Int { memory.liveCount }

    /// Refused: the models implement no function reset.
    public func reset() throws(DeviceError) {
        throw DeviceError(.unsupported, address, "the model does not implement a function reset")
    }

    /// Disables interrupts, marks the regions released (later accesses are faults) and stops the
    /// model's scheduled work. Idempotent.
    public func close() {
        let wasOpen = lock.withLock { () -> Bool in defer { isOpen = false }; return isOpen }
        guard wasOpen else { return }
        try? disableInterrupts()
        for region in regions.values { region.health.markReleased("the device was closed") }
        removal?.letGo()
        worker.stop()
    }
}

/// A BAR whose registers are the model's.
final class BARRegisters: RegisterFile, @unchecked Sendable {
    let bar: Int
    weak var device: ModeledDevice?
    init(bar: Int) { self.bar = bar }
    func read(at offset: Int, width: Int) -> UInt64 { device?.read(bar: bar, offset: offset, width: width) ?? .max }
    func write(at offset: Int, width: Int, value: UInt64) { device?.write(bar: bar, offset: offset, width: width, value: value) }
}

/// A model's configuration space: plain bytes, all ones once the device is removed.
final class ModelConfigSpace: ConfigSpaceBacking, @unchecked Sendable {
    private let lock = ConditionLock()
    private var bytes: [UInt8]
    var surpriseRemoved = false
    weak var device: ModeledDevice?

    init(_ bytes: [UInt8]) {
        self.bytes = bytes + [UInt8](repeating: 0, count: max(0, 256 - bytes.count))
    }

    var command: UInt16 { lock.withLock { UInt16(bytes[4]) | UInt16(bytes[5]) << 8 } }

    func read(at offset: Int, width: Int, device: PCIAddress) throws(DeviceError) -> UInt64 {
        lock.withLock {
            if surpriseRemoved { return width == 8 ? .max : (1 << (width * 8)) - 1 }
            return (0..<width).reduce(UInt64(0)) { $0 | UInt64(bytes[offset + $1]) << (8 * $1) }
        }
    }

    func write(_ value: UInt64, at offset: Int, width: Int, device: PCIAddress) throws(DeviceError) {
        lock.withLock {
            guard !surpriseRemoved, offset >= 4 else { return }  // Ids are read-only.
            for index in 0..<width { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
        }
    }
}
