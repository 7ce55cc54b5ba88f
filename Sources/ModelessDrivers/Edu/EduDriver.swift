import ModelessDevice
import ModelessRuntime
import ModelessSystem

/// A driver for QEMU's edu device, written once against the driver runtime: it runs
/// unchanged in user mode and in the kernel emulation, on the real device or its model.
///
/// The ISR's acknowledge routine reads the interrupt causes and clears them at the device;
/// the real ISR adds them to the causes pending for the driver and queues a DPC; the DPC,
/// with interrupts disabled while it touches what the ISR shares, hands them to the waiters.
public final class EduDriver: @unchecked Sendable {
    public enum Failure: Error, Equatable, CustomStringConvertible {
        case notEdu(identification: UInt32)
        case timedOut(String)
        case dataMismatch(firstDifference: Int)
        case device(String)

        public var description: String {
            switch self {
            case .notEdu(let identification): "not an edu device: identification 0x\(String(identification, radix: 16))"
            case .timedOut(let what): "timed out waiting for \(what)"
            case .dataMismatch(let first): "DMA data differs from byte \(first) on"
            case .device(let message): message
            }
        }
    }

    public let device: any DeviceAccess
    public let runtime: any DriverRuntime
    public let interruptKind: InterruptKind
    private let registers: MMIORegion
    private var attachment: InterruptAttachment?
    private var completion: DeferredProcedureCall?
    /// Causes the ISR saw and the DPC has not handed on yet: shared with the ISR.
    private var causesFromISR: UInt32 = 0
    /// Causes handed to waiters.
    private let waiters = ConditionLock()
    private var completedCauses: UInt32 = 0

    /// Checks the device, enables bus mastering and one interrupt vector of `interrupt`, and
    /// attaches the ISR.
    public init(device: any DeviceAccess, runtime: any DriverRuntime, interrupt: InterruptKind = .msi) throws {
        self.device = device
        self.runtime = runtime
        self.interruptKind = interrupt
        registers = try device.region(0)
        let identification = try registers.read32(at: EduRegister.identification)
        guard identification == EduValue.identification else { throw Failure.notEdu(identification: identification) }
        try device.config.setBusMastering(true)
        let vector = try device.enableInterrupts(interrupt, count: 1)[0]
        let completion = runtime.makeDPC("edu completion") { [unowned self] in self.handOnCauses() }
        self.completion = completion
        let registers = self.registers
        attachment = try runtime.attachInterrupt(
            vector, name: "edu",
            acknowledge: {
                let causes = (try? registers.read32(at: EduRegister.interruptStatus)) ?? 0
                try? registers.write32(causes, at: EduRegister.acknowledgeInterrupt)
                return UInt64(causes)
            },
            isr: { [unowned self] causes in
                self.causesFromISR |= UInt32(truncatingIfNeeded: causes)
                completion.queue()
            })
    }

    /// The DPC: take the ISR's causes with interrupts disabled, then wake the waiters.
    private func handOnCauses() {
        let causes = runtime.withInterruptsDisabled { () -> UInt32 in
            defer { causesFromISR = 0 }
            return causesFromISR
        }
        waiters.withLock {
            completedCauses |= causes
            waiters.broadcast()
        }
    }

    /// Each operation waits for its interrupt, which an ISR or DPC would hold up by waiting:
    /// refused there before the device is touched, so the refusal changes nothing.
    private func refuseToWaitAtInterruptLevel(for what: String) throws {
        guard !runtime.isAtInterruptLevel else {
            throw Failure.device("waiting for \(what) from an ISR or DPC would stall the interrupt that ends the wait: call from an ordinary thread")
        }
    }

    private func wait(for cause: UInt32, _ what: String, timeoutSeconds: Double = 10) throws {
        let deadline = monotonicNanoseconds() + UInt64(timeoutSeconds * 1e9)
        try waiters.withLock {
            while completedCauses & cause != cause {
                let now = monotonicNanoseconds()
                guard now < deadline, waiters.wait(nanoseconds: deadline - now) || completedCauses & cause == cause else {
                    if completedCauses & cause == cause { break }
                    throw Failure.timedOut(what)
                }
            }
            completedCauses &= ~cause
        }
    }

    /// The identification register and a liveness check (the device inverts what it is given).
    public func identify() throws -> (identification: UInt32, alive: Bool) {
        let identification = try registers.read32(at: EduRegister.identification)
        try registers.write32(0x5A5A_0F0F, at: EduRegister.liveness)
        return (identification, try registers.read32(at: EduRegister.liveness) == ~0x5A5A_0F0F)
    }

    /// n! computed by the device (modulo 2^32), completion signalled by interrupt.
    public func factorial(_ n: UInt32) throws -> UInt32 {
        try refuseToWaitAtInterruptLevel(for: "the factorial of \(n)")
        try registers.write32(EduValue.interruptOnFactorial, at: EduRegister.status)
        try registers.write32(n, at: EduRegister.factorial)
        try wait(for: EduValue.factorialDone, "the factorial of \(n)")
        return try registers.read32(at: EduRegister.factorial)
    }

    /// Raises an interrupt with `cause` through the device's raise register and waits for it.
    public func raiseInterrupt(_ cause: UInt32 = 0x1000) throws {
        try refuseToWaitAtInterruptLevel(for: "interrupt 0x\(String(cause, radix: 16))")
        try registers.write32(cause, at: EduRegister.raiseInterrupt)
        try wait(for: cause, "interrupt 0x\(String(cause, radix: 16))")
    }

    /// Copies `data` (at most 4 KiB) RAM → device → RAM by DMA and returns what came back.
    public func dmaRoundTrip(_ data: [UInt8]) throws -> [UInt8] {
        try refuseToWaitAtInterruptLevel(for: "a DMA round trip")
        let source = try device.allocateDMA(size: data.count)
        let destination = try device.allocateDMA(size: data.count)
        defer { source.free(); destination.free() }
        try source.write(data)
        try destination.fill(0)
        try transfer(from: source.deviceAddress, to: EduValue.bufferAddress, count: data.count, toRAM: false)
        try transfer(from: EduValue.bufferAddress, to: destination.deviceAddress, count: data.count, toRAM: true)
        return try destination.read(data.count)
    }

    private func transfer(from source: UInt64, to destination: UInt64, count: Int, toRAM: Bool) throws {
        try registers.write64(source, at: EduRegister.dmaSource)
        try registers.write64(destination, at: EduRegister.dmaDestination)
        try registers.write64(UInt64(count), at: EduRegister.dmaCount)
        try registers.write64(EduValue.dmaStart | EduValue.dmaInterrupt | (toRAM ? EduValue.dmaToRAM : 0), at: EduRegister.dmaCommand)
        try wait(for: EduValue.dmaDone, "a DMA transfer \(toRAM ? "to RAM" : "to the device")")
    }

    /// How many times the ISR ran, and how many interrupts it covered.
    public var interruptCounts: (isrCalls: Int, interrupts: Int) {
        (attachment?.isrCalls ?? 0, attachment?.interrupts ?? 0)
    }

    /// Detaches the ISR, then disables the device's interrupts.
    public func stop() {
        if let attachment { runtime.detachInterrupt(attachment) }
        attachment = nil
        try? device.disableInterrupts()
    }
}

/// What the edu driver's self-test found: identical on every mode and backend.
public struct EduReport: Equatable, Sendable, CustomStringConvertible {
    public var identification: UInt32
    public var alive: Bool
    public var factorials: [UInt32: UInt32]
    public var interruptsRaised: Int
    public var dmaBytes: Int
    public var dmaMatches: Bool

    public init(identification: UInt32, alive: Bool, factorials: [UInt32: UInt32], interruptsRaised: Int,
                dmaBytes: Int, dmaMatches: Bool) {
        self.identification = identification
        self.alive = alive
        self.factorials = factorials
        self.interruptsRaised = interruptsRaised
        self.dmaBytes = dmaBytes
        self.dmaMatches = dmaMatches
    }

    public var description: String {
        let factorialText = factorials.keys.sorted().map { "\($0)! = \(factorials[$0]!)" }.joined(separator: ", ")
        return """
            identification: 0x\(hex8(identification)) (\(alive ? "alive" : "liveness check FAILED"))
            factorials:     \(factorialText)
            interrupts:     \(interruptsRaised) raised through the device and handled
            DMA:            \(dmaBytes) bytes RAM → device → RAM, \(dmaMatches ? "identical" : "DIFFERENT")
            """
    }
}

extension EduDriver {
    /// Identification, factorials with interrupt completion, raised interrupts, and a DMA round
    /// trip of a fixed pattern (2 KiB: QEMU 7.2's edu rejects a transfer ending at its buffer's end).
    public func selfTest() throws -> EduReport {
        let (identification, alive) = try identify()
        var factorials: [UInt32: UInt32] = [:]
        for n: UInt32 in [0, 1, 5, 10, 12, 13] { factorials[n] = try factorial(n) }
        for cause: UInt32 in [0x1000, 0x2000, 0x4000] { try raiseInterrupt(cause) }
        let pattern = (0..<2048).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
        let back = try dmaRoundTrip(pattern)
        return EduReport(identification: identification, alive: alive, factorials: factorials,
                         interruptsRaised: 3, dmaBytes: pattern.count, dmaMatches: back == pattern)
    }
}

/// Eight hexadecimal digits.
func hex8(_ value: UInt32) -> String {
    let digits = String(value, radix: 16)
    return String(repeating: "0", count: 8 - digits.count) + digits
}
