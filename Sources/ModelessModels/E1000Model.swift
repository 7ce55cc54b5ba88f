import ModelessDevice
import ModelessSystem

/// Intel's 82540EM as drivers' unit tests need it: control and status, the EEPROM read
/// register holding the MAC address, interrupt cause (cleared on read) and mask registers,
/// receive and transmit descriptor rings in DMA memory, and the good-packet statistics.
/// Transmitted frames are recorded and, with ``loopback``, received again; tests inject
/// received frames with ``receive(_:)``. INTx is raised while an unmasked cause is pending.
///
/// Faults: the link can be taken down, and received frames can be dropped.
public final class E1000Model: DeviceModel, @unchecked Sendable {
    public let barSizes = [0: 0x20000, 1: 64]
    public let vectorCounts: [InterruptKind: Int] = [.intx: 1]
    public var initialConfigSpace: [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 256)
        bytes[0] = 0x86; bytes[1] = 0x80; bytes[2] = 0x0e; bytes[3] = 0x10   // 8086:100e
        bytes[8] = 0x03; bytes[0x0B] = 0x02                                  // class 020000
        bytes[0x3D] = 1
        return bytes
    }

    public let mac: [UInt8]
    /// Transmitted frames are received again.
    public var loopback: Bool {
        get { lock.withLock { loopbackValue } }
        set { lock.withLock { loopbackValue = newValue } }
    }
    /// Link down: STATUS.LU clear, nothing sent or received.
    public var linkDown: Bool {
        get { lock.withLock { linkDownValue } }
        set { lock.withLock { linkDownValue = newValue } }
    }

    private let lock = ConditionLock()
    private var context: ModelContext?
    private var registers: [Int: UInt32] = [:]
    private var loopbackValue = false
    private var linkDownValue = false
    private var sent: [[UInt8]] = []
    private var dropped = 0

    public init(mac: [UInt8] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]) {
        precondition(mac.count == 6)
        self.mac = mac
    }

    public func connect(_ context: ModelContext) { lock.withLock { self.context = context } }

    /// Frames the driver transmitted, oldest first.
    public var transmitted: [[UInt8]] { lock.withLock { sent } }
    /// The interrupt causes the driver has unmasked (IMS).
    public var interruptMask: UInt32 { lock.withLock { registers[R.ims, default: 0] } }
    /// Frames that arrived with no receive descriptor free (or the receiver off).
    public var droppedFrames: Int { lock.withLock { dropped } }

    // Register offsets (see the driver's E1000Register for their names).
    private enum R {
        static let ctrl = 0x0, status = 0x8, eerd = 0x14, icr = 0xC0, ims = 0xD0, imc = 0xD8
        static let rctl = 0x100, tctl = 0x400
        static let rdbal = 0x2800, rdbah = 0x2804, rdlen = 0x2808, rdh = 0x2810, rdt = 0x2818
        static let tdbal = 0x3800, tdbah = 0x3804, tdlen = 0x3808, tdh = 0x3810, tdt = 0x3818
        static let gprc = 0x4074, gptc = 0x4080
    }

    public func read(bar: Int, offset: Int, width: Int) -> UInt64 {
        guard bar == 0, width == 4 else { return 0 }
        lock.lock()
        let value: UInt32
        switch offset {
        case R.status:
            value = (registers[R.ctrl, default: 0] & (1 << 6) != 0 && !linkDownValue ? 1 << 1 : 0) | 1 << 0
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

    public func write(bar: Int, offset: Int, width: Int, value: UInt64) {
        guard bar == 0, width == 4 else { return }
        let value = UInt32(truncatingIfNeeded: value)
        lock.lock()
        switch offset {
        case R.ctrl where value & (1 << 26) != 0:
            registers = [:]  // Reset: everything to zero, the reset bit clears itself.
        case R.eerd where value & 1 != 0:
            let word = Int(value >> 8 & 0xFF)
            let data: UInt32 = word < 3 ? UInt32(mac[word * 2]) | UInt32(mac[word * 2 + 1]) << 8 : 0xFFFF
            registers[R.eerd] = data << 16 | 1 << 4 | (value & 0xFF00)
        case R.ims:
            // Unmasking a cause that is already pending raises the interrupt, as on hardware.
            registers[R.ims, default: 0] |= value
            let raise = registers[R.icr, default: 0] & registers[R.ims, default: 0] != 0
            lock.unlock()
            if raise { context?.raiseInterrupt() }
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
                    registers[R.gptc, default: 0] += 1
                }
                if next.loop { deliver(frame) }
            }
            if descriptor[11] & (1 << 3) != 0 { context.dmaWrite([1], to: next.address + 12) }  // DD
            cause(1 << 0)  // TXDW
        }
    }

    /// Sets interrupt causes and raises INTx if any is unmasked.
    private func cause(_ bits: UInt32) {
        let raise = lock.withLock { () -> Bool in
            registers[R.icr, default: 0] |= bits
            return registers[R.icr, default: 0] & registers[R.ims, default: 0] != 0
        }
        if raise { context?.raiseInterrupt() }
    }
}
