import ModelessDevice
import ModelessRuntime
import ModelessSystem

/// A driver for Intel's 82540EM (QEMU's `-device e1000`), once for every mode: reset, the
/// MAC address from the EEPROM, link up, receive and transmit descriptor rings in DMA memory,
/// the interrupt cause read in the acknowledge routine, receive processing in a DPC that
/// polls under load (NAPI style) or in a polling thread, batched send and receive without
/// per-frame allocation, and statistics.
///
/// The datapath (``receiveFrames(budget:_:)``, ``transmitFrames(count:_:)``) hands frames
/// to and from the caller as views of the DMA buffers themselves: no arrays, no objects and
/// no reference counting per frame.
public final class E1000Driver: @unchecked Sendable {
    public enum Failure: Error, CustomStringConvertible {
        case timedOut(String)
        case badFrame(String)
        case badConfiguration(String)

        public var description: String {
            switch self {
            case .timedOut(let what): "timed out: \(what)"
            case .badFrame(let what), .badConfiguration(let what): what
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
    /// The MAC address read from the EEPROM.
    public private(set) var macAddress: [UInt8] = []
    /// Received frames, each copied into an array for this handler (convenient, but it
    /// allocates per frame); used when ``onFrameView`` is nil.
    public var onFrame: (@Sendable ([UInt8]) -> Void)?
    /// Received frames, each lent to this handler as a view of its DMA buffer (valid only
    /// during the call; no copy). Takes precedence over ``onFrame``. Runs with the receive
    /// ring locked: it may send, but must not call ``receiveFrames(budget:_:)``.
    public var onFrameView: (@Sendable (borrowing DMABytes) -> Void)?

    /// Descriptors per ring.
    public let ringSize: Int
    /// The most frames one receive DPC pass takes before it queues itself again.
    public let receiveBudget: Int
    static let bufferSize = 2048
    /// The largest frame without FCS (the NIC appends it).
    public static let maximumFrame = 1514
    /// The smallest frame: an Ethernet header (the NIC pads short frames to 60 bytes).
    public static let minimumFrame = 14
    let registers: MMIORegion
    let receiveDescriptors: DMABuffer
    let transmitDescriptors: DMABuffer
    let receiveBuffers: DMAPool
    let transmitBuffers: DMAPool
    /// The next receive descriptor to look at. Guarded by `receiveLock`.
    var receiveNext = 0
    /// The next free transmit descriptor. Guarded by `transmitLock`.
    var transmitTail = 0
    /// The oldest descriptor handed to the NIC and not yet seen done: descriptors from here to
    /// the tail are the NIC's. One descriptor always stays unused, because a tail equal to the
    /// head means an empty ring to the NIC. Guarded by `transmitLock`.
    var transmitClean = 0
    let transmitLock = ConditionLock()
    let receiveLock = ConditionLock()
    var attachment: InterruptAttachment?
    var receiveDPC: DeferredProcedureCall?
    private var poller: SystemThread?
    let stopping = ConditionLock()
    var isStopping = false
    /// Guarded by `receiveLock`.
    var receiveCounters = (frames: 0, bytes: 0, passes: 0, budgetExhausted: 0)
    /// Guarded by `transmitLock`.
    var transmitCounters = (frames: 0, bytes: 0, batches: 0)

    /// Brings the NIC up with receive processing by interrupts of kind `interrupt` (`.intx`
    /// on the 82540EM), or by a polling thread when it is nil.
    public convenience init(device: any DeviceAccess, runtime: any DriverRuntime, interrupt: InterruptKind?) throws {
        try self.init(device: device, runtime: runtime, receive: interrupt.map { .interrupts($0) } ?? .pollingThread)
    }

    /// Brings the NIC up. `ringSize` descriptors per ring (a multiple of 8, 8 to 4096);
    /// `receiveBudget` frames at most per receive DPC pass.
    public init(device: any DeviceAccess, runtime: any DriverRuntime, receive: ReceiveMode,
                ringSize: Int = 32, receiveBudget: Int = 64) throws {
        guard ringSize % 8 == 0, (8...4096).contains(ringSize) else {
            throw Failure.badConfiguration("a descriptor ring holds a multiple of 8 descriptors from 8 to 4096, not \(ringSize)")
        }
        guard receiveBudget > 0 else { throw Failure.badConfiguration("the receive budget must be positive, not \(receiveBudget)") }
        self.device = device
        self.runtime = runtime
        self.ringSize = ringSize
        self.receiveBudget = receiveBudget
        registers = try device.region(0)
        try device.config.setCommand([.memorySpace, .busMaster], true)
        receiveDescriptors = try device.allocateDMA(size: ringSize * 16)
        transmitDescriptors = try device.allocateDMA(size: ringSize * 16)
        receiveBuffers = try DMAPool(device: device, chunkSize: Self.bufferSize, count: ringSize)
        transmitBuffers = try DMAPool(device: device, chunkSize: Self.bufferSize, count: ringSize)
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
        for index in 0..<ringSize {
            try receiveDescriptors.store64(receiveBuffers.chunk(index).deviceAddress, at: index * 16)
        }
        try setRing(receiveDescriptors, base: E1000Register.receiveBaseLow)
        try registers.write32(0, at: E1000Register.receiveHead)
        try registers.write32(UInt32(ringSize - 1), at: E1000Register.receiveTail)
        try registers.write32(E1000Bit.receiveEnable | E1000Bit.receiveBroadcastAccept | E1000Bit.receiveStripCRC,
                              at: E1000Register.receiveControl)
        // Transmit ring: empty (clean index = tail = head); every descriptor keeps its own buffer.
        try transmitDescriptors.fill(0)
        for index in 0..<ringSize {
            try transmitDescriptors.store64(transmitBuffers.chunk(index).deviceAddress, at: index * 16)
        }
        try setRing(transmitDescriptors, base: E1000Register.transmitBaseLow)
        try registers.write32(0, at: E1000Register.transmitHead)
        try registers.write32(0, at: E1000Register.transmitTail)
        try registers.write32(E1000Bit.transmitEnable | E1000Bit.transmitPadShort | 0x10 << 4 | 0x40 << 12,
                              at: E1000Register.transmitControl)
        try registers.write32(10 | 8 << 10 | 6 << 20, at: E1000Register.transmitIPG)

        switch receive {
        case .interrupts(let kind):
            try attachReceiveInterrupt(kind)
        case .pollingThread:
            poller = try SystemThread(name: "e1000 poll") { [unowned self] in
                while !self.stopping.withLock({ self.isStopping }) {
                    if self.deliverReceived(budget: self.receiveBudget) == 0 { usleep(50) }
                }
            }
        case .caller:
            break
        }
    }

    private func setRing(_ ring: DMABuffer, base: Int) throws {
        try registers.write32(UInt32(truncatingIfNeeded: ring.deviceAddress), at: base)
        try registers.write32(UInt32(truncatingIfNeeded: ring.deviceAddress >> 32), at: base + 4)
        try registers.write32(UInt32(ringSize * 16), at: base + 8)
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

    /// The descriptor after `slot` in a ring, wrapping to 0.
    @inline(__always)
    func ringSlot(after slot: Int) -> Int { slot + 1 == ringSize ? 0 : slot + 1 }

    func waitUntil(_ what: String, _ condition: () throws -> Bool) throws {
        for _ in 0..<1000 {
            if try condition() { return }
            usleep(1000)
        }
        throw Failure.timedOut(what)
    }

    /// Whether the link is up (STATUS.LU).
    public var linkUp: Bool { ((try? registers.read32(at: E1000Register.status)) ?? 0) & E1000Bit.statusLinkUp != 0 }

    /// Frames and bytes the driver received and sent.
    public var statistics: (framesReceived: Int, framesSent: Int, bytesReceived: Int, bytesSent: Int) {
        let received = receiveLock.withLock { receiveCounters }
        let sent = transmitLock.withLock { transmitCounters }
        return (received.frames, sent.frames, received.bytes, sent.bytes)
    }

    /// How receive processing went: DPC (or polling thread) passes over the ring, and passes
    /// that used up the budget and so polled again with receive interrupts still masked.
    public var receivePasses: (passes: Int, budgetExhausted: Int) {
        receiveLock.withLock { (receiveCounters.passes, receiveCounters.budgetExhausted) }
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
