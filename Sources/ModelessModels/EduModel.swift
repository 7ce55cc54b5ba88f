import ModelessDevice
import ModelessSystem

/// QEMU's `edu` teaching device (QEMU docs/specs/edu.rst), register for register: an
/// identification register, a liveness check, a factorial unit, interrupt raise and
/// acknowledge registers, and a DMA engine with a 4 KiB buffer at device address 0x40000.
///
/// Registers below 0x80 answer 4-byte accesses only, the DMA registers 4- or 8-byte ones;
/// other accesses read all ones and are ignored when written, as on the real device. DMA
/// addresses are clamped to the device's 28-bit DMA mask. As in QEMU, the DMA registers and the
/// factorial register ignore writes while a transfer or a factorial runs, and a cause stays
/// pending (and the INTx line asserted) until it is acknowledged, whoever started the work.
public final class EduModel: DeviceModel, @unchecked Sendable {
    /// The register offsets in BAR 0 (QEMU docs/specs/edu.rst).
    public enum Register {
        /// Identification (0x00), liveness check (0x04, reads back the inverse), factorial (0x08),
        /// status (0x20).
        public static let identification = 0x00, liveness = 0x04, factorial = 0x08, status = 0x20
        /// Interrupt status (0x24), raise interrupt (0x60), acknowledge interrupt (0x64).
        public static let interruptStatus = 0x24, raiseInterrupt = 0x60, acknowledgeInterrupt = 0x64
        /// DMA source (0x80), destination (0x88), count (0x90) and command (0x98).
        public static let dmaSource = 0x80, dmaDestination = 0x88, dmaCount = 0x90, dmaCommand = 0x98
    }

    /// What the identification register reads: version 1.0, `0xed`.
    public static let identification: UInt32 = 0x0100_00ed
    /// The interrupt status bit a finished factorial raises.
    public static let factorialInterrupt: UInt32 = 0x0000_0001
    /// The interrupt status bit a finished DMA transfer raises.
    public static let dmaInterrupt: UInt32 = 0x0000_0100
    /// The status bit set while a factorial is computed.
    public static let statusComputing: UInt32 = 0x01
    /// The status bit that asks for an interrupt when a factorial is done.
    public static let statusInterruptOnFactorial: UInt32 = 0x80
    /// The device address of the device's own DMA buffer.
    public static let dmaBufferAddress: UInt64 = 0x40000
    /// The size of the device's DMA buffer.
    public static let dmaBufferSize = 4096
    /// The device's DMA mask: it drives 28 address bits.
    public static let dmaMask: UInt64 = (1 << 28) - 1

    /// BAR 0: 1 MiB of registers.
    public let barSizes = [0: 1 << 20]
    /// INTx and one MSI vector.
    public let vectorCounts: [InterruptKind: Int] = [.intx: 1, .msi: 1]
    /// QEMU's edu ids (1234:11e8), interrupt pin A and an MSI capability with one 64-bit vector.
    public var initialConfigSpace: [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 256)
        bytes[0] = 0x34; bytes[1] = 0x12; bytes[2] = 0xe8; bytes[3] = 0x11   // 1234:11e8
        bytes[6] = 0x10                                                      // capability list
        bytes[8] = 0x10                                                      // revision
        bytes[0x0A] = 0xFF                                                   // class 00ff00
        bytes[0x2C] = 0xf4; bytes[0x2D] = 0x1a; bytes[0x2E] = 0x00; bytes[0x2F] = 0x11  // 1af4:1100
        bytes[0x34] = 0x40
        bytes[0x3D] = 1                                                      // INTA
        bytes[0x40] = 0x05                                                   // MSI, one vector, 64-bit
        bytes[0x42] = 0x80
        return bytes
    }

    /// How long a factorial and a DMA transfer take (QEMU: a thread, and a 100 ms timer).
    public let factorialDelay: Duration
    /// How long a DMA transfer takes.
    public let dmaDelay: Duration

    private let lock = ConditionLock()
    private var context: ModelContext?
    private var liveness: UInt32 = 0
    private var factorial: UInt32 = 0
    private var status: UInt32 = 0
    private var interruptStatus: UInt32 = 0
    private var dmaSource: UInt64 = 0
    private var dmaDestination: UInt64 = 0
    private var dmaCount: UInt64 = 0
    private var dmaCommand: UInt64 = 0
    private var buffer = [UInt8](repeating: 0, count: EduModel.dmaBufferSize)
    /// DMA transfers that pointed outside the device buffer or at unmapped memory.
    public private(set) var dmaFaults = 0

    /// An edu device whose factorials take `factorialDelay` and DMA transfers `dmaDelay`.
    public init(factorialDelay: Duration = .microseconds(50), dmaDelay: Duration = .milliseconds(1)) {
        self.factorialDelay = factorialDelay
        self.dmaDelay = dmaDelay
    }

    /// Keeps `context` to raise interrupts, reach DMA memory and schedule completions.
    public func connect(_ context: ModelContext) {
        lock.withLock { self.context = context }
    }

    /// Reads a register: 4-byte accesses below 0x80, 4 or 8 bytes for DMA; anything else reads all ones.
    public func read(bar: Int, offset: Int, width: Int) -> UInt64 {
        guard width == 4 || (offset >= 0x80 && width == 8) else { return .max }
        return lock.withLock {
            switch offset {
            case Register.identification: UInt64(Self.identification)
            case Register.liveness: UInt64(~liveness)
            case Register.factorial: UInt64(factorial)
            case Register.status: UInt64(status)
            case Register.interruptStatus: UInt64(interruptStatus)
            case Register.dmaSource: dmaSource
            case Register.dmaDestination: dmaDestination
            case Register.dmaCount: dmaCount
            case Register.dmaCommand: dmaCommand
            default: width == 8 ? .max : 0xFFFF_FFFF
            }
        }
    }

    /// Writes a register, starting a factorial, a DMA transfer, or raising or acknowledging an interrupt.
    public func write(bar: Int, offset: Int, width: Int, value: UInt64) {
        guard width == 4 || (offset >= 0x80 && width == 8) else { return }
        let value32 = UInt32(truncatingIfNeeded: value)
        lock.lock()
        switch offset {
        case Register.liveness:
            liveness = value32
        case Register.factorial where status & Self.statusComputing == 0:
            factorial = value32
            status |= Self.statusComputing
            lock.unlock()
            context?.schedule(after: factorialDelay) { [weak self] in self?.finishFactorial() }
            return
        case Register.status:
            status = (status & ~Self.statusInterruptOnFactorial) | (value32 & Self.statusInterruptOnFactorial)
        case Register.raiseInterrupt:
            lock.unlock()
            raise(value32)
            return
        case Register.acknowledgeInterrupt:
            interruptStatus &= ~value32
            let lower = interruptStatus == 0
            lock.unlock()
            if lower { context?.lowerInterrupt() }
            return
        case Register.dmaSource where dmaCommand & 1 == 0: dmaSource = value
        case Register.dmaDestination where dmaCommand & 1 == 0: dmaDestination = value
        case Register.dmaCount where dmaCommand & 1 == 0: dmaCount = value
        case Register.dmaCommand where value & 1 != 0 && dmaCommand & 1 == 0:
            dmaCommand = value
            lock.unlock()
            context?.schedule(after: dmaDelay) { [weak self] in self?.finishDMA() }
            return
        default:
            break
        }
        lock.unlock()
    }

    private func raise(_ cause: UInt32) {
        lock.withLock { interruptStatus |= cause }
        context?.raiseInterrupt()
    }

    private func finishFactorial() {
        let raiseInterrupt = lock.withLock { () -> Bool in
            var result: UInt32 = 1
            if factorial > 1 { for n in 2...factorial { result &*= n } }
            factorial = result
            status &= ~Self.statusComputing
            return status & Self.statusInterruptOnFactorial != 0
        }
        if raiseInterrupt { raise(Self.factorialInterrupt) }
    }

    private func finishDMA() {
        let (source, destination, count, command) = lock.withLock {
            (dmaSource & Self.dmaMask, dmaDestination & Self.dmaMask, Int(dmaCount), dmaCommand)
        }
        let toRAM = command & 0b10 != 0
        let deviceSide = toRAM ? source : destination
        let inBuffer = deviceSide >= Self.dmaBufferAddress && count >= 0
            && deviceSide + UInt64(count) <= Self.dmaBufferAddress + UInt64(Self.dmaBufferSize)
        var ok = inBuffer
        if inBuffer {
            let start = Int(deviceSide - Self.dmaBufferAddress)
            if toRAM {
                let bytes = lock.withLock { Array(buffer[start..<start + count]) }
                ok = context?.dmaWrite(bytes, to: destination) ?? false
            } else if let bytes = context?.dmaRead(source, count: count) {
                lock.withLock { buffer.replaceSubrange(start..<start + count, with: bytes) }
            } else {
                ok = false
            }
        }
        let raiseInterrupt = lock.withLock { () -> Bool in
            if !ok { dmaFaults += 1 }
            dmaCommand &= ~1
            return command & 0b100 != 0
        }
        if raiseInterrupt { raise(Self.dmaInterrupt) }
    }
}
