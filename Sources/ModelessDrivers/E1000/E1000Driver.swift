import ModelessDevice
import ModelessRuntime
import ModelessSystem

/// A driver for Intel's 82540EM (QEMU's `-device e1000`), once for every mode: reset, the
/// MAC address from the EEPROM, link up, receive and transmit descriptor rings in DMA memory,
/// the interrupt cause read in the acknowledge routine, receive processing in a DPC (or a
/// polling thread), and statistics.
public final class E1000Driver: @unchecked Sendable {
    public enum Failure: Error, CustomStringConvertible {
        case timedOut(String)
        case badFrame(String)

        public var description: String {
            switch self {
            case .timedOut(let what): "timed out: \(what)"
            case .badFrame(let what): what
            }
        }
    }

    public let device: any DeviceAccess
    public let runtime: any DriverRuntime
    /// The MAC address read from the EEPROM.
    public private(set) var macAddress: [UInt8] = []
    /// Frames received, handed to this handler from receive processing.
    public var onFrame: (@Sendable ([UInt8]) -> Void)?

    static let ringSize = 32
    static let bufferSize = 2048
    private let registers: MMIORegion
    private let receiveDescriptors: DMABuffer
    private let transmitDescriptors: DMABuffer
    private let receiveBuffers: DMAPool
    private let transmitBuffers: DMAPool
    private var receiveNext = 0
    private var transmitTail = 0
    /// The oldest descriptor handed to the NIC and not yet seen done: descriptors from here to
    /// the tail are the NIC's. One descriptor always stays unused, because a tail equal to the
    /// head means an empty ring to the NIC.
    private var transmitClean = 0
    private let transmitLock = ConditionLock()
    private let receiveLock = ConditionLock()
    private var attachment: InterruptAttachment?
    private var poller: SystemThread?
    private let stopping = ConditionLock()
    private var isStopping = false
    private var counters = (framesReceived: 0, framesSent: 0, bytesReceived: 0, bytesSent: 0)

    /// Brings the NIC up. `interrupt` is `.msi` or `.intx`, or nil to poll the receive ring.
    public init(device: any DeviceAccess, runtime: any DriverRuntime, interrupt: InterruptKind?) throws {
        self.device = device
        self.runtime = runtime
        registers = try device.region(0)
        try device.config.setCommand([.memorySpace, .busMaster], true)
        receiveDescriptors = try device.allocateDMA(size: Self.ringSize * 16)
        transmitDescriptors = try device.allocateDMA(size: Self.ringSize * 16)
        receiveBuffers = try DMAPool(device: device, chunkSize: Self.bufferSize, count: Self.ringSize)
        transmitBuffers = try DMAPool(device: device, chunkSize: Self.bufferSize, count: Self.ringSize)

        try registers.write32(0xFFFF_FFFF, at: E1000Register.interruptMaskClear)
        try registers.write32(try registers.read32(at: E1000Register.control) | E1000Bit.controlReset, at: E1000Register.control)
        try waitUntil("the reset to finish") { try registers.read32(at: E1000Register.control) & E1000Bit.controlReset == 0 }
        try registers.write32(0xFFFF_FFFF, at: E1000Register.interruptMaskClear)
        _ = try registers.read32(at: E1000Register.interruptCause)

        macAddress = try (0..<3).flatMap { word -> [UInt8] in
            let value = try readEEPROM(UInt8(word))
            return [UInt8(truncatingIfNeeded: value), UInt8(truncatingIfNeeded: value >> 8)]
        }
        let low = UInt32(macAddress[0]) | UInt32(macAddress[1]) << 8 | UInt32(macAddress[2]) << 16 | UInt32(macAddress[3]) << 24
        try registers.write32(low, at: E1000Register.receiveAddressLow)
        try registers.write32(UInt32(macAddress[4]) | UInt32(macAddress[5]) << 8 | 1 << 31, at: E1000Register.receiveAddressHigh)
        for index in 0..<128 { try registers.write32(0, at: E1000Register.multicastTable + index * 4) }
        let control = try registers.read32(at: E1000Register.control)
        try registers.write32(control | E1000Bit.controlSetLinkUp | E1000Bit.controlAutoSpeed, at: E1000Register.control)

        // Receive ring: every descriptor owns a buffer; the tail is one behind the head.
        try receiveDescriptors.fill(0)
        for index in 0..<Self.ringSize {
            try receiveDescriptors.store64(receiveBuffers.chunk(index).deviceAddress, at: index * 16)
        }
        try setRing(receiveDescriptors, base: E1000Register.receiveBaseLow)
        try registers.write32(0, at: E1000Register.receiveHead)
        try registers.write32(UInt32(Self.ringSize - 1), at: E1000Register.receiveTail)
        try registers.write32(E1000Bit.receiveEnable | E1000Bit.receiveBroadcastAccept | E1000Bit.receiveStripCRC,
                              at: E1000Register.receiveControl)
        // Transmit ring: empty (clean index = tail = head).
        try transmitDescriptors.fill(0)
        try setRing(transmitDescriptors, base: E1000Register.transmitBaseLow)
        try registers.write32(0, at: E1000Register.transmitHead)
        try registers.write32(0, at: E1000Register.transmitTail)
        try registers.write32(E1000Bit.transmitEnable | E1000Bit.transmitPadShort | 0x10 << 4 | 0x40 << 12,
                              at: E1000Register.transmitControl)
        try registers.write32(10 | 8 << 10 | 6 << 20, at: E1000Register.transmitIPG)

        if let interrupt {
            let vector = try device.enableInterrupts(interrupt, count: 1)[0]
            let receive = runtime.makeDPC("e1000 receive") { [unowned self] in self.processReceived() }
            let registers = self.registers
            attachment = try runtime.attachInterrupt(vector, name: "e1000", acknowledge: {
                UInt64((try? registers.read32(at: E1000Register.interruptCause)) ?? 0)  // Reading clears the causes.
            }) { cause in
                if UInt32(truncatingIfNeeded: cause) & (E1000Bit.causeReceiveTimer | E1000Bit.causeReceiveLow | E1000Bit.causeReceiveOverrun) != 0 {
                    receive.queue()
                }
            }
            try registers.write32(E1000Bit.causeReceiveTimer | E1000Bit.causeReceiveLow | E1000Bit.causeReceiveOverrun
                                  | E1000Bit.causeLinkStatus, at: E1000Register.interruptMaskSet)
        } else {
            poller = try SystemThread(name: "e1000 poll") { [unowned self] in
                while !self.stopping.withLock({ self.isStopping }) {
                    if self.processReceived() == 0 { usleep(50) }
                }
            }
        }
    }

    private func setRing(_ ring: DMABuffer, base: Int) throws {
        try registers.write32(UInt32(truncatingIfNeeded: ring.deviceAddress), at: base)
        try registers.write32(UInt32(truncatingIfNeeded: ring.deviceAddress >> 32), at: base + 4)
        try registers.write32(UInt32(Self.ringSize * 16), at: base + 8)
    }

    private func readEEPROM(_ word: UInt8) throws -> UInt16 {
        try registers.write32(UInt32(word) << 8 | 1, at: E1000Register.eepromRead)
        var value: UInt32 = 0
        try waitUntil("EEPROM word \(word)") {
            value = try registers.read32(at: E1000Register.eepromRead)
            return value & (1 << 4) != 0
        }
        return UInt16(truncatingIfNeeded: value >> 16)
    }

    private func waitUntil(_ what: String, _ condition: () throws -> Bool) throws {
        for _ in 0..<1000 {
            if try condition() { return }
            usleep(1000)
        }
        throw Failure.timedOut(what)
    }

    /// Whether the link is up (STATUS.LU).
    public var linkUp: Bool { ((try? registers.read32(at: E1000Register.status)) ?? 0) & E1000Bit.statusLinkUp != 0 }

    /// Takes every received frame off the ring, hands each to ``onFrame`` and gives the
    /// descriptors back. Returns how many frames it took.
    @discardableResult
    public func processReceived() -> Int {
        var frames: [[UInt8]] = []
        receiveLock.withLock {
            while let status = try? receiveDescriptors.load8(at: receiveNext * 16 + 12), status & E1000Bit.descriptorDone != 0 {
                let length = Int((try? receiveDescriptors.load16(at: receiveNext * 16 + 8)) ?? 0)
                if status & E1000Bit.endOfPacket != 0, let frame = try? receiveBuffers.read(length, from: receiveBuffers.chunk(receiveNext)) {
                    frames.append(frame)
                }
                try? receiveDescriptors.store8(0, at: receiveNext * 16 + 12)
                try? registers.write32(UInt32(receiveNext), at: E1000Register.receiveTail)
                receiveNext = (receiveNext + 1) % Self.ringSize
            }
        }
        for frame in frames {
            transmitLock.withLock {
                counters.framesReceived += 1
                counters.bytesReceived += frame.count
            }
            onFrame?(frame)
        }
        return frames.count
    }

    /// Sends one Ethernet frame (without FCS; the NIC adds it), waiting for a free descriptor.
    public func send(_ frame: [UInt8]) throws {
        guard (14...1514).contains(frame.count) else { throw Failure.badFrame("a frame is 14 to 1514 bytes, not \(frame.count)") }
        try transmitLock.withLock {
            try waitUntil("a free transmit descriptor") {
                try reclaimTransmitted()
                return (transmitClean - transmitTail - 1 + Self.ringSize) % Self.ringSize > 0
            }
            let slot = transmitTail
            let chunk = transmitBuffers.chunk(slot)
            try transmitBuffers.write(frame, to: chunk)
            try transmitDescriptors.store64(chunk.deviceAddress, at: slot * 16)
            try transmitDescriptors.store16(UInt16(frame.count), at: slot * 16 + 8)
            try transmitDescriptors.store8(E1000Bit.commandEndOfPacket | E1000Bit.commandInsertFCS | E1000Bit.commandReportStatus,
                                           at: slot * 16 + 11)
            try transmitDescriptors.store8(0, at: slot * 16 + 12)
            transmitTail = (slot + 1) % Self.ringSize
            try registers.write32(UInt32(transmitTail), at: E1000Register.transmitTail)
            counters.framesSent += 1
            counters.bytesSent += frame.count
        }
    }

    /// Moves the clean index past descriptors the NIC has finished (DD set). The caller holds `transmitLock`.
    private func reclaimTransmitted() throws {
        while transmitClean != transmitTail,
              try transmitDescriptors.load8(at: transmitClean * 16 + 12) & E1000Bit.descriptorDone != 0 {
            transmitClean = (transmitClean + 1) % Self.ringSize
        }
    }

    /// Frames and bytes the driver received and sent.
    public var statistics: (framesReceived: Int, framesSent: Int, bytesReceived: Int, bytesSent: Int) {
        transmitLock.withLock { counters }
    }

    /// Stops receive processing, masks the NIC's interrupts and disables its receiver and transmitter.
    public func stop() {
        stopping.withLock { isStopping = true }
        poller?.join()
        poller = nil
        if let attachment { runtime.detachInterrupt(attachment) }
        attachment = nil
        try? registers.write32(0xFFFF_FFFF, at: E1000Register.interruptMaskClear)
        try? registers.write32(0, at: E1000Register.receiveControl)
        try? registers.write32(0, at: E1000Register.transmitControl)
        try? device.disableInterrupts()
    }
}

#if canImport(Glibc)
import Glibc
#endif
