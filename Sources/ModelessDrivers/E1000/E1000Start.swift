import ModelessBus
import ModelessDevice
import ModelessRuntime
import ModelessSystem

/// Starting: the device confirmed before anything is written to it, a global reset before bus
/// mastering and interrupts, the MAC address from the EEPROM, then the address filter, the
/// link, both rings and receive processing. And the reverse, for stopping.
extension E1000Driver {
    /// The controller behind `device`, from its configuration space ids.
    static func identify(_ device: any DeviceAccess) throws -> E1000Variant {
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
    static func probeAndReset(_ device: any DeviceAccess, _ registers: MMIORegion, _ variant: E1000Variant,
                              runtime: any DriverRuntime, event: WaitEvent) throws -> [UInt8] {
        try device.config.setCommand(.busMaster, false)  // No DMA by whatever the last owner left running.
        try device.config.setCommand(.memorySpace, true)
        guard registers.load(E1000Register.status) != .max else {
            throw Failure.notResponding("STATUS reads all-ones at \(device.address)")
        }
        // Global reset, with every interrupt masked before and after (the reset unmasks none,
        // but a cause may be latched between the two), and pending causes read away.
        registers.store(InterruptCauses.all.rawValue, to: E1000Register.interruptMaskClear)
        // The receiver and the transmitter off first, by hand: a reset that leaves them as a
        // killed predecessor left them (QEMU's e1000 and e1000e reset only the MAC address on
        // CTRL.RST) would otherwise keep the receiver enabled while bus mastering is off, and
        // the ring tail written at start would hand the frames queued for the NIC to descriptors
        // whose writes go nowhere: the NIC fills the ring, no descriptor is ever done, and
        // nothing is received again. With the receiver off the NIC drops those frames instead.
        registers.store(0, to: E1000Register.receiveControl)
        registers.store(0, to: E1000Register.transmitControl)
        let control = try Self.loadResponding(registers, E1000Register.control, "CTRL")
        registers.store(control | DeviceControl.reset.rawValue, to: E1000Register.control)
        try waitUntil("the global reset (CTRL.RST) to finish", runtime: runtime, event: event) {
            let control = try Self.loadResponding(registers, E1000Register.control, "CTRL during the reset")
            return DeviceControl(rawValue: control).isDisjoint(with: .reset)
        }
        registers.store(InterruptCauses.all.rawValue, to: E1000Register.interruptMaskClear)
        if let routing = variant.msix { clearMSIXRouting(routing, registers) }
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

    /// Undoes what a predecessor's MSI-X set-up left (82574L), where a reset may not: no cause
    /// routed to a vector (IVAR), none cleared or masked when its vector fires (EIAC, IAME),
    /// and every cause cleared by writing ICR (write-one-to-clear on this controller). Done
    /// with interrupts masked and before MSI-X is enabled again, so no vector fires for a
    /// cause of the predecessor's.
    static func clearMSIXRouting(_ routing: E1000MSIXRouting, _ registers: MMIORegion) {
        registers.store(0, to: routing.register)
        registers.store(0, to: E1000Register.extendedAutoClear)
        var control = ExtendedControl(rawValue: registers.load(E1000Register.extendedControl))
        control.remove([.autoMaskOnAcknowledge, .clearPendingOnMask])
        registers.store(control.rawValue, to: E1000Register.extendedControl)
        registers.store(InterruptCauses.all.rawValue, to: E1000Register.interruptCause)
    }

    /// One 16-bit EEPROM word through EERD.
    static func readEEPROM(_ word: UInt8, _ registers: MMIORegion, _ variant: E1000Variant,
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
    static func loadResponding(_ registers: MMIORegion, _ register: Register<UInt32>, _ name: String) throws -> UInt32 {
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
    func start(_ mode: ReceiveMode) throws {
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

    func setRing(_ ring: DescriptorRing, base low: Register<UInt32>, _ high: Register<UInt32>, _ length: Register<UInt32>) {
        registers.store(UInt32(truncatingIfNeeded: ring.memory.deviceAddress), to: low)
        registers.store(UInt32(truncatingIfNeeded: ring.memory.deviceAddress >> 32), to: high)
        registers.store(ring.byteCount, to: length)
    }

    /// Masks every interrupt and turns the receiver, the transmitter and bus mastering off.
    func quiesce() {
        registers.store(InterruptCauses.all.rawValue, to: E1000Register.interruptMaskClear)
        registers.store(0, to: E1000Register.receiveControl)
        registers.store(0, to: E1000Register.transmitControl)
        do {
            try device.config.setCommand(.busMaster, false)
        } catch {
            fault.report("bus mastering could not be turned off: \(error)")
        }
    }
}
