import ModelessDevice
import ModelessSystem

/// Intel's 82540EM (or, as ``Variant/i82574L``, its PCIe successor the 82574L) as drivers'
/// unit tests need it: control and status, the EEPROM read register holding the MAC address
/// (with each controller's layout), interrupt cause (cleared on read, set through ICS) and
/// mask registers, receive and transmit descriptor rings in DMA memory, and the good-packet
/// statistics. Transmitted frames are recorded and, with ``loopback``, received again; tests
/// inject received frames with ``receive(_:)``. INTx (or MSI) is raised while an unmasked
/// cause is pending. The 82574L also has MSI-X as QEMU's e1000e models it: receive and
/// transmit causes become RXQ0 and TXQ0, link changes also set OTHER, IVAR routes each to a
/// vector, EIAC clears (and, with CTRL_EXT.IAME clear, masks) a cause when its vector fires,
/// and reading ICR does not clear it (writing 1s does). The model's state outlives a device opened on it, as a NIC's outlives
/// the process that drove it: a second ``ModeledDevice`` on the same model finds what the
/// first left behind.
///
/// Faults: the link can be taken down, received frames can be dropped, and the NIC can stop
/// answering (``notResponding``). Every register write is recorded (``writes``), with whether
/// bus mastering was on at the time.
public final class E1000Model: DeviceModel, @unchecked Sendable {
    /// The controllers the model can be.
    public enum Variant: Sendable {
        /// 8086:100e, EERD.DONE bit 4 and the word address in bits 15:8; INTx.
        case i82540EM
        /// 8086:10d3, EERD.DONE bit 1 and the word address in bits 15:2; INTx, MSI and five MSI-X vectors.
        case i82574L

        var deviceID: UInt16 { self == .i82540EM ? 0x100E : 0x10D3 }
        var eepromDone: UInt32 { self == .i82540EM ? 1 << 4 : 1 << 1 }
        var eepromAddressShift: UInt32 { self == .i82540EM ? 8 : 2 }
    }

    /// One register write the driver made.
    public struct RegisterWrite: Sendable, Equatable {
        /// The register's byte offset in BAR 0.
        public let offset: Int
        /// The value written.
        public let value: UInt32
        /// Whether bus mastering was enabled when it was written.
        public let busMaster: Bool
    }

    /// BAR 0: 128 KiB of registers; BAR 1: the 64-byte I/O window.
    public let barSizes = [0: 0x20000, 1: 64]
    /// INTx, and on the 82574L one MSI vector and the MSI-X vectors.
    public var vectorCounts: [InterruptKind: Int] { variant == .i82540EM ? [.intx: 1] : [.intx: 1, .msi: 1, .msix: Self.msixVectors] }
    /// The 82574L's MSI-X vectors.
    public static let msixVectors = 5
    /// Intel's vendor id, the variant's device id, class 020000 (Ethernet), interrupt pin A.
    public var initialConfigSpace: [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 256)
        bytes[0] = 0x86; bytes[1] = 0x80                                     // Intel
        bytes[2] = UInt8(variant.deviceID & 0xFF); bytes[3] = UInt8(variant.deviceID >> 8)
        bytes[8] = 0x03; bytes[0x0B] = 0x02                                  // class 020000
        bytes[0x3D] = 1
        return bytes
    }

    /// The MAC address the EEPROM holds.
    public let mac: [UInt8]
    /// Which controller the model is.
    public let variant: Variant
    /// The NIC stopped answering: every register reads all-ones, writes have no effect (they
    /// are still recorded in ``writes``).
    public var notResponding: Bool {
        get { lock.withLock { notRespondingValue } }
        set { lock.withLock { notRespondingValue = newValue } }
    }
    /// Transmitted frames are received again.
    public var loopback: Bool {
        get { lock.withLock { loopbackValue } }
        set { lock.withLock { loopbackValue = newValue } }
    }
    /// Link down: STATUS.LU clear, nothing sent or received. A change raises the link status
    /// change cause (LSC).
    public var linkDown: Bool {
        get { lock.withLock { linkDownValue } }
        set {
            let changed = lock.withLock { () -> Bool in
                defer { linkDownValue = newValue }
                return linkDownValue != newValue
            }
            if changed { cause(MSIX.lsc) }
        }
    }

    private let lock = ConditionLock()
    private var context: ModelContext?
    private var registers: [Int: UInt32] = [:]
    private var loopbackValue = false
    private var linkDownValue = false
    private var sent: [[UInt8]] = []
    private var sentReporting: [Bool] = []
    private var dropped = 0
    private var notRespondingValue = false
    private var writeLog: [RegisterWrite] = []
    private var unmaskedPending = 0
    private var msixRaised: [Int: Int] = [:]

    /// A controller of `variant` whose EEPROM holds `mac` (6 bytes).
    public init(mac: [UInt8] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56], variant: Variant = .i82540EM) {
        precondition(mac.count == 6)
        self.mac = mac
        self.variant = variant
    }

    /// Keeps `context` to raise interrupts and reach the descriptor rings and buffers.
    public func connect(_ context: ModelContext) { lock.withLock { self.context = context } }

    /// Frames the driver transmitted, oldest first.
    public var transmitted: [[UInt8]] { lock.withLock { sent } }
    /// For each frame in ``transmitted``, whether its descriptor asked for a write-back (RS).
    public var transmittedWithReportStatus: [Bool] { lock.withLock { sentReporting } }
    /// The interrupt causes the driver has unmasked (IMS).
    public var interruptMask: UInt32 { lock.withLock { registers[R.ims, default: 0] } }
    /// Frames that arrived with no receive descriptor free (or the receiver off).
    public var droppedFrames: Int { lock.withLock { dropped } }
    /// Every register write so far, oldest first.
    public var writes: [RegisterWrite] { lock.withLock { writeLog } }
    /// Forgets the writes recorded so far.
    public func clearWrites() { lock.withLock { writeLog = [] } }
    /// The interrupt causes pending (ICR, without clearing it).
    public var pendingCauses: UInt32 { lock.withLock { registers[R.icr, default: 0] } }
    /// How many IMS writes unmasked a cause that was already pending (each raises an
    /// interrupt at once: a stale cause taken for a new one).
    public var unmaskedWhilePending: Int { lock.withLock { unmaskedPending } }
    /// MSI-X interrupts raised so far, by vector.
    public var msixInterrupts: [Int: Int] { lock.withLock { msixRaised } }
    /// Whether the receiver and the transmitter are enabled (RCTL.EN, TCTL.EN).
    public var ringsEnabled: (receive: Bool, transmit: Bool) {
        lock.withLock { (registers[R.rctl, default: 0] & (1 << 1) != 0, registers[R.tctl, default: 0] & (1 << 1) != 0) }
    }

    // Register offsets (see the driver's E1000Register for their names).
    private enum R {
        static let ctrl = 0x0, status = 0x8, eerd = 0x14, ctrlExt = 0x18, icr = 0xC0, ics = 0xC8, ims = 0xD0, imc = 0xD8
        static let eiac = 0xDC, ivar = 0xE4
        static let rctl = 0x100, tctl = 0x400
        static let rdbal = 0x2800, rdbah = 0x2804, rdlen = 0x2808, rdh = 0x2810, rdt = 0x2818
        static let tdbal = 0x3800, tdbah = 0x3804, tdlen = 0x3808, tdh = 0x3810, tdt = 0x3818
        static let gprc = 0x4074, gptc = 0x4080
    }

    /// Reads a register of BAR 0 (all ones while the NIC does not respond); ICR is cleared on read.
    public func read(bar: Int, offset: Int, width: Int) -> UInt64 {
        guard bar == 0, width == 4 else { return 0 }
        let msix = inMSIXMode
        lock.lock()
        if notRespondingValue {
            lock.unlock()
            return UInt64(UInt32.max)
        }
        let value: UInt32
        switch offset {
        case R.status:
            value = (registers[R.ctrl, default: 0] & (1 << 6) != 0 && !linkDownValue ? 1 << 1 : 0) | 1 << 0
        case R.icr where msix:  // Not cleared by reading in MSI-X mode.
            value = registers[offset, default: 0]
        case R.icr, R.gprc, R.gptc:  // Cleared by reading.
            value = registers[offset, default: 0]
            registers[offset] = 0
        default:
            value = registers[offset, default: 0]
        }
        lock.unlock()
        if offset == R.icr { context?.lowerInterrupt() }
        return UInt64(value)
    }

    /// Writes a register of BAR 0, with its side effects (reset, ring tails, interrupt mask and cause).
    public func write(bar: Int, offset: Int, width: Int, value: UInt64) {
        guard bar == 0, width == 4 else { return }
        let value = UInt32(truncatingIfNeeded: value)
        let busMaster = context?.busMasterEnabled ?? false
        let msix = inMSIXMode
        lock.lock()
        writeLog.append(RegisterWrite(offset: offset, value: value, busMaster: busMaster))
        if notRespondingValue {
            lock.unlock()
            return
        }
        switch offset {
        case R.ctrl where value & (1 << 26) != 0:
            registers = [:]  // Reset: everything to zero, the reset bit clears itself.
        case R.eerd where value & 1 != 0:
            let word = Int(value >> variant.eepromAddressShift & 0xFF)
            let data: UInt32 = word < 3 ? UInt32(mac[word * 2]) | UInt32(mac[word * 2 + 1]) << 8 : 0xFFFF
            registers[R.eerd] = data << 16 | variant.eepromDone | (value & (0xFF << variant.eepromAddressShift))
        case R.ics:
            // In MSI-X mode a link change also sets OTHER.
            let value = msix && value & MSIX.lsc != 0 ? value | MSIX.other : value
            registers[R.icr, default: 0] |= value
            let vectors = pendingVectors(msix: msix, raised: value)
            lock.unlock()
            raise(vectors)
            return
        case R.ims:
            // Unmasking a cause that is already pending raises the interrupt, as on hardware.
            if registers[R.icr, default: 0] & value != 0 { unmaskedPending += 1 }
            registers[R.ims, default: 0] |= value
            let vectors = pendingVectors(msix: msix, raised: value)
            lock.unlock()
            raise(vectors)
            return
        case R.imc: registers[R.ims, default: 0] &= ~value
        case R.icr: registers[R.icr, default: 0] &= ~value
        case R.tdt:
            registers[R.tdt] = value
            lock.unlock()
            context?.schedule { [weak self] in self?.transmit() }
            return
        default:
            registers[offset] = value
        }
        lock.unlock()
    }

    /// Raises the interrupt whatever the causes and the mask, as a NIC that failed does (with
    /// ``notResponding``: an interrupt whose ICR reads all-ones). With INTx the line stays
    /// asserted until ICR is read while the NIC answers.
    public func assertInterrupt() { context?.raiseInterrupt() }

    /// A frame arrives on the wire.
    public func receive(_ frame: [UInt8]) {
        context?.schedule { [weak self] in self?.deliver(frame) }
    }

    private func deliver(_ frame: [UInt8]) {
        let slot: (descriptor: UInt64, buffer: UInt64)? = lock.withLock {
            let enabled = registers[R.rctl, default: 0] & (1 << 1) != 0
            let count = Int(registers[R.rdlen, default: 0]) / 16
            let head = Int(registers[R.rdh, default: 0]), tail = Int(registers[R.rdt, default: 0])
            guard enabled, !linkDownValue, count > 0, head != tail else { dropped += 1; return nil }
            let base = UInt64(registers[R.rdbal, default: 0]) | UInt64(registers[R.rdbah, default: 0]) << 32
            registers[R.rdh] = UInt32((head + 1) % count)
            return (base + UInt64(head * 16), 0)
        }
        guard let slot, let context, let descriptor = context.dmaRead(slot.descriptor, count: 16) else { return }
        let buffer = (0..<8).reduce(UInt64(0)) { $0 | UInt64(descriptor[$1]) << (8 * $1) }
        guard context.dmaWrite(frame, to: buffer) else { return }
        context.dmaWrite([UInt8(frame.count & 0xFF), UInt8(frame.count >> 8), 0, 0, 0b11, 0, 0, 0], to: slot.descriptor + 8)
        cause(1 << 7)  // RXT0
        lock.withLock { registers[R.gprc, default: 0] += 1 }
    }

    private func transmit() {
        while true {
            let next: (address: UInt64, loop: Bool)? = lock.withLock {
                let count = Int(registers[R.tdlen, default: 0]) / 16
                let head = Int(registers[R.tdh, default: 0]), tail = Int(registers[R.tdt, default: 0])
                guard registers[R.tctl, default: 0] & (1 << 1) != 0, count > 0, head != tail else { return nil }
                registers[R.tdh] = UInt32((head + 1) % count)
                let base = UInt64(registers[R.tdbal, default: 0]) | UInt64(registers[R.tdbah, default: 0]) << 32
                return (base + UInt64(head * 16), loopbackValue)
            }
            guard let next, let context, let descriptor = context.dmaRead(next.address, count: 16) else { return }
            let buffer = (0..<8).reduce(UInt64(0)) { $0 | UInt64(descriptor[$1]) << (8 * $1) }
            let length = Int(descriptor[8]) | Int(descriptor[9]) << 8
            if let frame = context.dmaRead(buffer, count: length), !linkDown {
                lock.withLock {
                    sent.append(frame)
                    sentReporting.append(descriptor[11] & (1 << 3) != 0)
                    registers[R.gptc, default: 0] += 1
                }
                if next.loop { deliver(frame) }
            }
            if descriptor[11] & (1 << 3) != 0 { context.dmaWrite([1], to: next.address + 12) }  // DD
            cause(1 << 0)  // TXDW
        }
    }

    /// Sets interrupt causes (in MSI-X mode, their MSI-X forms) and raises the interrupt if
    /// any is unmasked.
    private func cause(_ bits: UInt32) {
        let msix = inMSIXMode
        let vectors = lock.withLock { () -> [Int] in
            let bits = msix ? MSIX.causes(for: bits) : bits
            registers[R.icr, default: 0] |= bits
            return pendingVectors(msix: msix, raised: bits)
        }
        raise(vectors)
    }

    private func raise(_ vectors: [Int]) {
        for vector in vectors { context?.raiseInterrupt(vector: vector) }
    }

    /// Whether the device's user enabled MSI-X (only the 82574L has it).
    private var inMSIXMode: Bool { variant == .i82574L && context?.interruptKind == .msix }

    /// The 82574L's MSI-X causes and IVAR layout (datasheet 10.2.4.9; QEMU's e1000e).
    private enum MSIX {
        static let rxq0: UInt32 = 1 << 20, txq0: UInt32 = 1 << 22, other: UInt32 = 1 << 24
        static let rxt0: UInt32 = 1 << 7, txdw: UInt32 = 1 << 0, lsc: UInt32 = 1 << 2
        static let iame: UInt32 = 1 << 27
        /// Each MSI-X cause and where its IVAR entry starts.
        static let routed: [(cause: UInt32, shift: UInt32)] = [(rxq0, 0), (txq0, 8), (other, 16)]

        /// What a cause is reported as in MSI-X mode.
        static func causes(for bits: UInt32) -> UInt32 {
            var result = bits & ~(rxt0 | txdw)
            if bits & rxt0 != 0 { result |= rxq0 }
            if bits & txdw != 0 { result |= txq0 }
            if bits & lsc != 0 { result |= other }
            return result
        }
    }

    /// With the lock held: the vectors to raise for pending unmasked causes. Outside MSI-X
    /// mode, vector 0 if any cause is pending and unmasked. In MSI-X mode, the vector of each
    /// pending unmasked cause among `raised` that IVAR routes, then EIAC's auto-clear (and,
    /// without CTRL_EXT.IAME, auto-mask) of that cause.
    private func pendingVectors(msix: Bool, raised: UInt32) -> [Int] {
        let pending = registers[R.icr, default: 0] & registers[R.ims, default: 0]
        guard msix else { return pending != 0 ? [0] : [] }
        var vectors: [Int] = []
        for (cause, shift) in MSIX.routed where pending & raised & cause != 0 {
            let entry = registers[R.ivar, default: 0] >> shift & 0xF
            if entry & 0b1000 != 0, Int(entry & 0b111) < Self.msixVectors {
                vectors.append(Int(entry & 0b111))
                msixRaised[Int(entry & 0b111), default: 0] += 1
            }
            let autoClear = registers[R.eiac, default: 0] & cause
            registers[R.icr, default: 0] &= ~autoClear
            if registers[R.ctrlExt, default: 0] & MSIX.iame == 0 { registers[R.ims, default: 0] &= ~autoClear }
        }
        return vectors
    }
}
