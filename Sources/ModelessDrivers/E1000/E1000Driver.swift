import ModelessBus
import ModelessDevice
import ModelessRuntime
import ModelessSystem

/// A driver for Intel's 82540EM (QEMU's `-device e1000`) and 82574L (`-device e1000e`), once
/// for every mode, in the kernel's vocabulary:
///
/// - **Start**: the device is confirmed before it is touched (its ids, STATUS not all-ones),
///   then globally reset (interrupts masked, CTRL.RST, pending causes read away) before bus
///   mastering and interrupts are enabled, so that whatever a killed predecessor left behind
///   is gone; then the MAC address from the EEPROM, link up, and both descriptor rings.
/// - **Datapath**: ``receiveFrames(budget:_:)`` and ``transmitFrames(count:_:)`` lend frames as
///   views of the DMA buffers themselves, under the rings' ``SpinLock``s (shared with the
///   receive DPC): no allocation and no reference counting per frame, no register access that
///   throws.
/// - **Interrupts**: the acknowledge routine reads ICR; the ISR masks the receive causes and
///   queues the receive DPC, which polls while frames keep coming (NAPI style).
/// - **Failure**: a NIC that stops answering (a register reads all-ones, the register region
///   counts a failed access) is reported once in ``failure``; every later call fails with it.
public final class E1000Driver: @unchecked Sendable {
    public enum Failure: Error, CustomStringConvertible, Equatable {
        case timedOut(String)
        case badFrame(String)
        case badConfiguration(String)
        /// The NIC stopped answering (or was never there): registers read all-ones.
        case notResponding(String)
        /// No transmit descriptor is free and the caller cannot wait (an ISR, a DPC, a frame
        /// handler, or with interrupts disabled).
        case transmitRingFull
        /// The driver was stopped.
        case stopped

        public var description: String {
            switch self {
            case .timedOut(let what): "timed out: \(what)"
            case .badFrame(let what), .badConfiguration(let what): what
            case .notResponding(let what): "device not responding: \(what)"
            case .transmitRingFull: "no transmit descriptor is free and the caller may not wait for one"
            case .stopped: "the e1000 driver was stopped"
            }
        }
    }

    /// Who takes received frames off the ring.
    public enum ReceiveMode: Sendable {
        /// Interrupts of this kind (the 82540EM offers INTx); receive processing in a DPC,
        /// which masks receive interrupts and polls while frames keep coming (NAPI style).
        case interrupts(InterruptKind)
        /// A thread of the driver's own polls the ring.
        case pollingThread
        /// Nothing runs on its own: the caller takes frames with ``receiveFrames(budget:_:)``.
        case caller
    }

    public let device: any DeviceAccess
    public let runtime: any DriverRuntime
    /// The controller found at start.
    public let variant: E1000Variant
    /// The MAC address read from the EEPROM.
    public let macAddress: [UInt8]
    /// Descriptors per ring.
    public let ringSize: Int
    /// The most frames one receive DPC pass takes before it queues itself again.
    public let receiveBudget: Int
    /// The receive buffer size (RCTL.BSIZE).
    static let bufferSize = 2048
    /// The largest frame without FCS (the NIC appends it).
    public static let maximumFrame = 1514
    /// The smallest frame: an Ethernet header (the NIC pads short frames to 60 bytes).
    public static let minimumFrame = 14

    let registers: MMIORegion
    let fault: DeviceFault
    let receiveRing: DescriptorRing
    let transmitRing: DescriptorRing
    let receiveBuffers: DMAPool
    let transmitBuffers: DMAPool
    /// The receive side, shared by callers, the polling thread and the receive DPC.
    let receive: SpinLock<ReceiveState>
    /// The transmit side, shared by every sender (frame handlers in the DPC included).
    let transmit: SpinLock<TransmitState>
    /// Signalled by the ISR when a transmit descriptor was written back or the link changed;
    /// senders waiting for a free descriptor wait on it.
    let progress: WaitEvent
    /// Start and stop, at passive level.
    let lifecycle: PassiveLock<Lifecycle>
    /// The receive DPC, made once at start when receiving by interrupts.
    var receiveDPC: DeferredProcedureCall?

    struct ReceiveState {
        /// The next descriptor to look at.
        var next = 0
        var frames = 0, bytes = 0, errors = 0
        var passes = 0, budgetExhausted = 0
        /// Set by ``stop()``: the DPC and the polling thread do nothing more.
        var stopping = false
        var onFrameView: (@Sendable (borrowing DMABytes) -> Void)?
        var onFrame: (@Sendable ([UInt8]) -> Void)?
    }

    struct TransmitState {
        /// The next free descriptor.
        var tail = 0
        /// The oldest descriptor handed to the NIC and not yet seen done: descriptors from
        /// here to the tail are the NIC's. One descriptor always stays unused, because a tail
        /// equal to the head means an empty ring to the NIC.
        var clean = 0
        var frames = 0, bytes = 0, batches = 0
    }

    struct Lifecycle {
        var attachment: InterruptAttachment?
        var poller: SystemThread?
        var stopped = false
    }

    /// Brings the NIC up with receive processing by interrupts of kind `interrupt` (`.intx`
    /// on the 82540EM), or by a polling thread when it is nil.
    public convenience init(device: any DeviceAccess, runtime: any DriverRuntime, interrupt: InterruptKind?) throws {
        try self.init(device: device, runtime: runtime, receive: interrupt.map { .interrupts($0) } ?? .pollingThread)
    }

    /// Brings the NIC up. `ringSize` descriptors per ring (a multiple of 8, 8 to 4096);
    /// `receiveBudget` frames at most per receive DPC pass. A device that does not answer is
    /// refused at once with ``Failure/notResponding(_:)``, before anything is written to it.
    public init(device: any DeviceAccess, runtime: any DriverRuntime, receive mode: ReceiveMode,
                ringSize: Int = 32, receiveBudget: Int = 64) throws {
        guard ringSize % 8 == 0, (8...4096).contains(ringSize) else {
            throw Failure.badConfiguration("a descriptor ring holds a multiple of 8 descriptors from 8 to 4096, not \(ringSize)")
        }
        guard receiveBudget > 0 else { throw Failure.badConfiguration("the receive budget must be positive, not \(receiveBudget)") }
        self.device = device
        self.runtime = runtime
        self.ringSize = ringSize
        self.receiveBudget = receiveBudget
        variant = try Self.identify(device)
        registers = try device.region(0)
        progress = runtime.makeWaitEvent("e1000 progress")
        macAddress = try Self.probeAndReset(device, registers, variant, runtime: runtime, event: progress)

        fault = DeviceFault(runtime: runtime, name: "e1000")
        receiveRing = DescriptorRing(memory: try device.allocateDMA(size: ringSize * DescriptorRing.descriptorSize),
                                     count: ringSize, fault: fault)
        transmitRing = DescriptorRing(memory: try device.allocateDMA(size: ringSize * DescriptorRing.descriptorSize),
                                      count: ringSize, fault: fault)
        receiveBuffers = try DMAPool(device: device, chunkSize: Self.bufferSize, count: ringSize)
        transmitBuffers = try DMAPool(device: device, chunkSize: Self.bufferSize, count: ringSize)
        receive = runtime.makeSpinLock("e1000 receive ring", ReceiveState())
        transmit = runtime.makeSpinLock("e1000 transmit ring", TransmitState())
        lifecycle = runtime.makePassiveLock("e1000 lifecycle", Lifecycle())
        do {
            try start(mode)
        } catch {
            stop()
            throw error
        }
    }

    /// The controller behind `device`, from its configuration space ids.
    private static func identify(_ device: any DeviceAccess) throws -> E1000Variant {
        let vendor = try device.config.read16(at: PCIConfigSpace.Offset.vendorID)
        let id = try device.config.read16(at: PCIConfigSpace.Offset.deviceID)
        guard vendor != 0xFFFF else {
            throw Failure.notResponding("\(device.address)'s configuration space reads all-ones (removed, or powered down)")
        }
        guard let variant = E1000Variant.identify(vendor: vendor, device: id) else {
            let hex = { (value: UInt16) in String(value, radix: 16).leftPadded(to: 4) }
            throw Failure.badConfiguration("\(device.address) is \(hex(vendor)):\(hex(id)), not a controller this driver knows "
                                           + "(\(E1000Variant.all.map { "8086:\(hex($0.deviceID)) \($0.name)" }.joined(separator: ", ")))")
        }
        return variant
    }

    /// Confirms the device answers, resets it and reads its MAC address; the device does no
    /// DMA and raises no interrupt afterwards. Reads STATUS before writing anything, so a
    /// device that reads all-ones is refused without a single register write.
    private static func probeAndReset(_ device: any DeviceAccess, _ registers: MMIORegion, _ variant: E1000Variant,
                                      runtime: any DriverRuntime, event: WaitEvent) throws -> [UInt8] {
        try device.config.setCommand(.busMaster, false)  // No DMA by whatever the last owner left running.
        try device.config.setCommand(.memorySpace, true)
        guard registers.load(E1000Register.status) != .max else {
            throw Failure.notResponding("STATUS reads all-ones at \(device.address)")
        }
        // Global reset, with every interrupt masked before and after (the reset unmasks none,
        // but a cause may be latched between the two), and pending causes read away.
        registers.store(InterruptCauses.all.rawValue, to: E1000Register.interruptMaskClear)
        let control = try Self.loadResponding(registers, E1000Register.control, "CTRL")
        registers.store(control | DeviceControl.reset.rawValue, to: E1000Register.control)
        try waitUntil("the global reset (CTRL.RST) to finish", runtime: runtime, event: event) {
            let control = try Self.loadResponding(registers, E1000Register.control, "CTRL during the reset")
            return DeviceControl(rawValue: control).isDisjoint(with: .reset)
        }
        registers.store(InterruptCauses.all.rawValue, to: E1000Register.interruptMaskClear)
        _ = try Self.loadResponding(registers, E1000Register.interruptCause, "ICR after the reset")

        // The MAC address: EEPROM words 0, 1 and 2, low byte first.
        var mac: [UInt8] = []
        for word in UInt8(0)..<3 {
            let value = try readEEPROM(word, registers, variant, runtime: runtime, event: event)
            mac += [UInt8(truncatingIfNeeded: value), UInt8(truncatingIfNeeded: value >> 8)]
        }
        let text = mac.map { String($0, radix: 16).leftPadded(to: 2) }.joined(separator: ":")
        guard mac != [UInt8](repeating: 0xFF, count: 6) else { throw Failure.notResponding("the EEPROM reads all-ones") }
        guard mac.contains(where: { $0 != 0 }), mac[0] & 1 == 0 else {
            throw Failure.badConfiguration("the EEPROM holds \(text), which is not a station's MAC address (zero or multicast)")
        }
        return mac
    }

    /// One 16-bit EEPROM word through EERD.
    private static func readEEPROM(_ word: UInt8, _ registers: MMIORegion, _ variant: E1000Variant,
                                   runtime: any DriverRuntime, event: WaitEvent) throws -> UInt16 {
        registers.store(variant.eepromRequest(word: word), to: E1000Register.eepromRead)
        var data: UInt16?
        try waitUntil("EEPROM word \(word) (EERD.DONE)", runtime: runtime, event: event) {
            data = variant.eepromWord(in: try Self.loadResponding(registers, E1000Register.eepromRead, "EERD"))
            return data != nil
        }
        return data ?? 0
    }

    /// Reads `register`, refusing an all-ones value (no register of these NICs reads so).
    private static func loadResponding(_ registers: MMIORegion, _ register: Register<UInt32>, _ name: String) throws -> UInt32 {
        let value = registers.load(register)
        guard value != .max else { throw Failure.notResponding("\(name) reads all-ones") }
        return value
    }

    /// Waits at passive level (refused at interrupt level) until `condition` holds, checking it
    /// each time `event` is signalled and at least every millisecond, for at most `timeout`.
    static func waitUntil(_ what: @autoclosure () -> String, timeout: Duration = .seconds(1), runtime: any DriverRuntime,
                          event: WaitEvent, _ condition: () throws -> Bool) throws {
        try runtime.mightSleep("waiting for \(what())")
        let deadline = ContinuousClock.now + timeout
        while true {
            if try event.wait(timeout: .milliseconds(1), until: condition) { return }
            guard ContinuousClock.now < deadline else { throw Failure.timedOut(what()) }
        }
    }

    /// Programs the address filter, the link and both rings, enables bus mastering, the
    /// receiver and the transmitter, and starts receive processing.
    private func start(_ mode: ReceiveMode) throws {
        let low = macAddress[0..<4].enumerated().reduce(UInt32(0)) { $0 | UInt32($1.element) << (8 * $1.offset) }
        let high = UInt32(macAddress[4]) | UInt32(macAddress[5]) << 8
        registers.store(low, to: E1000Register.receiveAddressLow)
        registers.store(high | ReceiveAddressHigh.addressValid.rawValue, to: E1000Register.receiveAddressHigh)
        for entry in 0..<E1000Register.multicastTableEntries {
            registers.store(0, to: E1000Register.multicastTable.advanced(by: entry, stride: 4))
        }
        let control = DeviceControl(rawValue: registers.load(E1000Register.control))
        registers.store(control.union([.setLinkUp, .autoSpeedDetection]).rawValue, to: E1000Register.control)

        // Receive ring: every descriptor owns a buffer; the tail is one behind the head.
        try receiveRing.clear()
        for slot in 0..<ringSize { receiveRing.receive(slot).reset(buffer: receiveBuffers.chunk(slot).deviceAddress) }
        setRing(receiveRing, base: E1000Register.receiveBaseLow, E1000Register.receiveBaseHigh, E1000Register.receiveLength)
        registers.store(0, to: E1000Register.receiveHead)
        registers.store(UInt32(ringSize - 1), to: E1000Register.receiveTail)
        // Transmit ring: empty (clean = tail = head); every descriptor keeps its own buffer.
        try transmitRing.clear()
        for slot in 0..<ringSize { transmitRing.transmit(slot).reset(buffer: transmitBuffers.chunk(slot).deviceAddress) }
        setRing(transmitRing, base: E1000Register.transmitBaseLow, E1000Register.transmitBaseHigh, E1000Register.transmitLength)
        registers.store(0, to: E1000Register.transmitHead)
        registers.store(0, to: E1000Register.transmitTail)

        try device.config.setCommand(.busMaster, true)
        let receiveControl: ReceiveControl = [.enable, .broadcastAccept, .stripCRC, .bufferSize2048]
        registers.store(receiveControl.rawValue, to: E1000Register.receiveControl)
        let transmitControl: TransmitControl = [.enable, .padShortPackets, .collisionThreshold(0x10), .collisionDistance(0x40)]
        registers.store(transmitControl.rawValue, to: E1000Register.transmitControl)
        registers.store(TransmitIPG.copper.rawValue, to: E1000Register.transmitIPG)
        try checkResponding()

        switch mode {
        case .interrupts(let kind):
            try attachInterrupt(kind)
        case .pollingThread:
            let poller = try SystemThread(name: "e1000 poll") { [unowned self] in self.pollUntilStopped() }
            lifecycle.withLock { $0.poller = poller }
        case .caller:
            break
        }
    }

    private func setRing(_ ring: DescriptorRing, base low: Register<UInt32>, _ high: Register<UInt32>, _ length: Register<UInt32>) {
        registers.store(UInt32(truncatingIfNeeded: ring.memory.deviceAddress), to: low)
        registers.store(UInt32(truncatingIfNeeded: ring.memory.deviceAddress >> 32), to: high)
        registers.store(ring.byteCount, to: length)
    }

    /// Masks every interrupt and turns the receiver, the transmitter and bus mastering off.
    private func quiesce() {
        registers.store(InterruptCauses.all.rawValue, to: E1000Register.interruptMaskClear)
        registers.store(0, to: E1000Register.receiveControl)
        registers.store(0, to: E1000Register.transmitControl)
        do {
            try device.config.setCommand(.busMaster, false)
        } catch {
            fault.report("bus mastering could not be turned off: \(error)")
        }
    }

    /// Fails with ``Failure/notResponding(_:)`` once the NIC has been seen not answering (or
    /// the register region counted a failed access).
    @inline(__always)
    func checkResponding() throws {
        noteRegionFaults()
        if fault.isRaised { throw Failure.notResponding(fault.description ?? "") }
    }

    /// Reports the register region's first failed access, if it counted any.
    @inline(__always)
    private func noteRegionFaults() {
        guard registers.health.faultCount != 0, !fault.isRaised else { return }
        fault.report("a register access failed: \(registers.health.firstFault.map { "\($0)" } ?? "unknown")")
    }

    /// Why the driver stopped working, once the NIC stopped answering; nil while it works.
    public var failure: Failure? {
        noteRegionFaults()
        return fault.description.map { Failure.notResponding($0) }
    }

    /// Whether the link is up (STATUS.LU). A STATUS reading all-ones is reported in ``failure``.
    public var linkUp: Bool {
        let status = registers.load(E1000Register.status)
        guard status != .max else {
            fault.report("STATUS reads all-ones")
            return false
        }
        return DeviceStatus(rawValue: status).contains(.linkUp)
    }

    /// Frames and bytes the driver received and sent.
    public var statistics: (framesReceived: Int, framesSent: Int, bytesReceived: Int, bytesSent: Int) {
        let received = receive.withLock { ($0.frames, $0.bytes) }
        let sent = transmit.withLock { ($0.frames, $0.bytes) }
        return (received.0, sent.0, received.1, sent.1)
    }

    /// Received descriptors dropped because the NIC flagged an error or the frame did not fit
    /// one buffer.
    public var receiveErrors: Int { receive.withLock { $0.errors } }

    /// How receive processing went: DPC (or polling thread) passes over the ring, and passes
    /// that used up the budget and so polled again with receive interrupts still masked.
    public var receivePasses: (passes: Int, budgetExhausted: Int) {
        receive.withLock { ($0.passes, $0.budgetExhausted) }
    }

    /// Stops receive processing (the polling thread ends, the ISR is detached, a queued
    /// receive DPC does nothing more), masks the NIC's interrupts, disables its receiver,
    /// transmitter and bus mastering. Idempotent.
    public func stop() {
        lifecycle.withLock { life in
            guard !life.stopped else { return }
            life.stopped = true
            receive.withLock { $0.stopping = true }
            life.poller?.join()
            life.poller = nil
            if let attachment = life.attachment { runtime.detachInterrupt(attachment) }
            life.attachment = nil
            quiesce()
            do {
                try device.disableInterrupts()
            } catch {
                fault.report("its interrupts could not be disabled: \(error)")
            }
        }
        progress.signal()
    }
}

extension String {
    /// The string with `pad` characters in front up to `length`.
    func leftPadded(to length: Int, with pad: Character = "0") -> String {
        count >= length ? self : String(repeating: pad, count: length - count) + self
    }
}
