import Synchronization
import CModelessShim
import ModelessBus
import ModelessSystem

extension VFIODevice {
    /// Enables `count` vectors of `kind`, each signalled on its own eventfd
    /// (`VFIO_DEVICE_SET_IRQS` with `VFIO_IRQ_SET_ACTION_TRIGGER`).
    public func enableInterrupts(_ kind: InterruptKind, count: Int) throws(DeviceError) -> [InterruptVector] {
        try checkOpen()
        let available = vectorCount(kind)
        guard count > 0, count <= available else {
            throw DeviceError(.unsupported, address, "offers \(available) \(kind) vector(s); \(count) requested")
        }
        // An adopted device's holder left its eventfds registered with VFIO: for the same kind
        // and count they are taken as they are (no VFIO_DEVICE_SET_IRQS, which frees and
        // requests every vector's interrupt in the kernel: tens of ms under emulation).
        if let handed = state.withLock({ state in
            defer { state.handedInterrupts = nil }
            return state.handedInterrupts
        }) {
            if handed.kind == kind, handed.notifiers.count == count, state.withLock({ $0.interrupts == nil }) {
                state.withLock { $0.interrupts = (kind, handed.notifiers) }
                keptHandedInterrupts = true
                return vectors(kind, handed.notifiers, unmask: nil)
            }
            handed.notifiers.forEach { $0.close() }
        }
        try disableInterrupts()
        var notifiers: [EventNotifier] = []
        do {
            for _ in 0..<count { notifiers.append(try EventNotifier(system: system)) }
            do {
                try setIRQs(kind, flags: UInt32(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER),
                            start: 0, count: UInt32(count), fds: notifiers.map(\.fd))
            } catch where adopted {
                // An adopted device keeps the interrupts its previous holder enabled: the same
                // kind and count take the new eventfds at once; anything else is disabled first.
                for other in InterruptKind.allCases where vectorCount(other) > 0 {
                    try? setIRQs(other, flags: UInt32(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER), start: 0, count: 0, fds: [])
                }
                try setIRQs(kind, flags: UInt32(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER),
                            start: 0, count: UInt32(count), fds: notifiers.map(\.fd))
            }
        } catch {
            notifiers.forEach { $0.close() }
            throw DeviceError(error, address)
        }
        let unmask = kind == .intx ? INTxUnmaskRequest(deviceFD: deviceFD, system: system, address: address) : nil
        state.withLock {
            $0.interrupts = (kind, notifiers)
            $0.intxUnmask = unmask
        }
        return vectors(kind, notifiers, unmask: unmask)
    }

    /// The vectors of `notifiers`, enabled as `kind`.
    private func vectors(_ kind: InterruptKind, _ notifiers: [EventNotifier], unmask: INTxUnmaskRequest?) -> [InterruptVector] {
        notifiers.enumerated().map { index, notifier in
            InterruptVector(
                kind: kind, index: index, fd: notifier.fd, deliversOnEventfd: true, device: address,
                wait: { [address] () throws(DeviceError) -> UInt64 in
                    do throws(SystemError) { return try notifier.wait() } catch { throw DeviceError(error, address) }
                },
                acknowledge: { () throws(DeviceError) in try unmask?.send() },
                trigger: { [weak self, address] () throws(DeviceError) in
                    guard let self else { throw DeviceError(.closed, address, "the device was closed") }
                    do throws(SystemError) {
                        try self.setIRQs(kind, flags: UInt32(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER),
                                         start: UInt32(index), count: 1, fds: [])
                    } catch { throw DeviceError(error, address) }
                })
        }
    }

    /// Disables the enabled vectors and closes their eventfds.
    public func disableInterrupts() throws(DeviceError) {
        try checkOpen()
        do { try disableInterruptsUnchecked() } catch { throw DeviceError(error, address) }
    }

    func disableInterruptsUnchecked() throws(SystemError) {
        guard let enabled = state.withLock({ state in
            defer {
                state.interrupts = nil
                state.intxUnmask?.invalidate()
                state.intxUnmask = nil
            }
            return state.interrupts
        }) else { return }
        defer { enabled.notifiers.forEach { $0.close() } }
        try setIRQs(enabled.kind, flags: UInt32(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER), start: 0, count: 0, fds: [])
    }

    /// VFIO_DEVICE_SET_IRQS: `struct vfio_irq_set` followed by `fds` (its flexible `data` array).
    func setIRQs(_ kind: InterruptKind, flags: UInt32, start: UInt32, count: UInt32, fds: [Int32]) throws(SystemError) {
        try setIRQs(index: Self.irqIndex(kind), "\(kind)", flags: flags, start: start, count: count, fds: fds)
    }

    /// VFIO_DEVICE_SET_IRQS on IRQ index `index` (`name` for errors).
    func setIRQs(index: UInt32, _ name: String, flags: UInt32, start: UInt32, count: UInt32, fds: [Int32]) throws(SystemError) {
        try Self.setIRQs(deviceFD, system: system, address: address, index: index, name, flags: flags,
                         start: start, count: count, fds: fds)
    }

    /// VFIO_DEVICE_SET_IRQS on `deviceFD`: `struct vfio_irq_set` followed by `fds` (its flexible `data` array).
    static func setIRQs(_ deviceFD: Int32, system: any SystemCalls, address: PCIAddress, index: UInt32, _ name: String,
                        flags: UInt32, start: UInt32, count: UInt32, fds: [Int32]) throws(SystemError) {
        let header = MemoryLayout<vfio_irq_set>.size
        var bytes = [UInt8](repeating: 0, count: header + 4 * fds.count)
        let total = bytes.count
        _ = try system.checked("VFIO_DEVICE_SET_IRQS", "\(address) \(name)") {
            bytes.withUnsafeMutableBytes { raw in
                raw.storeBytes(of: UInt32(total), toByteOffset: 0, as: UInt32.self)
                raw.storeBytes(of: flags, toByteOffset: 4, as: UInt32.self)
                raw.storeBytes(of: index, toByteOffset: 8, as: UInt32.self)
                raw.storeBytes(of: start, toByteOffset: 12, as: UInt32.self)
                raw.storeBytes(of: count, toByteOffset: 16, as: UInt32.self)
                for (position, fd) in fds.enumerated() { raw.storeBytes(of: fd, toByteOffset: header + 4 * position, as: Int32.self) }
                return system.ioctl(deviceFD, modeless_VFIO_DEVICE_SET_IRQS, raw.baseAddress)
            }
        }
    }
}

/// The `VFIO_DEVICE_SET_IRQS` request that unmasks INTx after each interrupt, built once when
/// INTx is enabled: unmasking then allocates nothing, builds no string and retains nothing
/// unless it fails.
final class INTxUnmaskRequest: @unchecked Sendable {
    private let request: UnsafeMutableRawPointer
    private let deviceFD: Int32
    private let system: any SystemCalls
    private let address: PCIAddress
    private let valid = Atomic<Bool>(true)

    init(deviceFD: Int32, system: any SystemCalls, address: PCIAddress) {
        self.deviceFD = deviceFD
        self.system = system
        self.address = address
        let size = MemoryLayout<vfio_irq_set>.size
        request = .allocate(byteCount: size, alignment: MemoryLayout<vfio_irq_set>.alignment)
        request.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        request.storeBytes(of: UInt32(size), toByteOffset: 0, as: UInt32.self)  // argsz
        request.storeBytes(of: UInt32(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK), toByteOffset: 4, as: UInt32.self)
        request.storeBytes(of: VFIODevice.irqIndex(.intx), toByteOffset: 8, as: UInt32.self)
        request.storeBytes(of: UInt32(0), toByteOffset: 12, as: UInt32.self)  // start
        request.storeBytes(of: UInt32(1), toByteOffset: 16, as: UInt32.self)  // count
    }

    deinit { request.deallocate() }

    /// Refuses later unmasks: INTx was disabled or the device closed (its descriptor may be
    /// reused by then).
    func invalidate() { valid.store(false, ordering: .releasing) }

    /// Unmasks INTx.
    func send() throws(DeviceError) {
        guard valid.load(ordering: .acquiring) else {
            throw DeviceError(.closed, address, "INTx was disabled or the device closed before the unmask")
        }
        while system.ioctl(deviceFD, modeless_VFIO_DEVICE_SET_IRQS, request) == -1 {
            let error = system.lastError()
            if error == .interrupted { continue }
            throw DeviceError(SystemError("VFIO_DEVICE_SET_IRQS", "\(address) unmask INTx", errno: error), address)
        }
    }
}
