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
    public enum Register {
        public static let identification = 0x00, liveness = 0x04, factorial = 0x08, status = 0x20
        public static let interruptStatus = 0x24, raiseInterrupt = 0x60, acknowledgeInterrupt = 0x64
        public static let dmaSource = 0x80, dmaDestination = 0x88, dmaCount = 0x90, dmaCommand = 0x98
    }

    public static let identification: UInt32 = 0x0100_00ed
    public static let factorialInterrupt: UInt32 = 0x0000_0001
    public static let dmaInterrupt: UInt32 = 0x0000_0100
    public static let statusComputing: UInt32 = 0x01
    public static let statusInterruptOnFactorial: UInt32 = 0x80
    public static let dmaBufferAddress: UInt64 = 0x40000
    public static let dmaBufferSize = 4096
    public static let dmaMask: UInt64 = (1 << 28) - 1

    public let barSizes = [0: 1 << 20]
    public let vectorCounts: [InterruptKind: Int] = [.intx: 1, .msi: 1]
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

    public init(factorialDelay: Duration = .microseconds(50), dmaDelay: Duration = .milliseconds(1)) {
        self.factorialDelay = factorialDelay
        self.dmaDelay = dmaDelay
    }

    public func connect(_ context: ModelContext) {
        lock.withLock { self.context = context }
    }

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
