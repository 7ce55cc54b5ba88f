#if canImport(Glibc)
import Glibc
#endif
import ModelessDevice
import ModelessRuntime
import ModelessSystem

/// A driver for QEMU's edu device, written once against the driver runtime: it runs
/// unchanged in user mode and in the kernel emulation, on the real device or its model.
///
/// - **Start** (``init(device:runtime:interrupt:)``): checks the identification register, then
///   brings the device to a known state before it may interrupt or master the bus: waits for a
///   factorial or DMA transfer a previous driver left running (one killed mid-transfer), and
///   acknowledges every cause still pending, so that no stale cause is taken for one of this
///   driver's own and no INTx line is left asserted. Only then bus mastering, the vector, the ISR.
/// - **Acknowledge routine** (the generic ISR's device part): reads the interrupt status and
///   writes it back to the acknowledge register; a status of all ones from a device whose
///   identification reads all ones too means the device stopped answering.
/// - **ISR**: adds the causes to `Causes.fromISR` under the spin lock and queues the DPC.
/// - **DPC**: moves them to `Causes.completed` under the spin lock and signals the event the
///   waiters sleep on.
public final class EduDriver: @unchecked Sendable {
    /// Why an edu operation, or the driver, failed.
    public enum Failure: Error, DeviceRemovalReporting, Equatable, CustomStringConvertible {
        case notEdu(identification: UInt32)
        case timedOut(String)
        case dataMismatch(firstDifference: Int)
        /// The device's registers read all ones: it was removed or stopped answering.
        case notResponding
        /// The device was removed (`RemovalCause`): the kernel asked for it back, or it
        /// stopped answering. Operations in flight fail with this, and so does every later one.
        case removed(String)
        case device(String)

        /// What failed, with the value read or the wait that ran out.
        public var description: String {
            switch self {
            case .notEdu(let identification): "not an edu device: identification 0x\(String(identification, radix: 16)) (edu reads 0x\(String(EduIdentification.expected, radix: 16)))"
            case .timedOut(let what): "timed out waiting for \(what)"
            case .dataMismatch(let first): "DMA data differs from byte \(first) on"
            case .notResponding: "device not responding: its registers read all ones (removed, or reset under the driver)"
            case .removed(let why): why
            case .device(let message): message
            }
        }

        /// Whether the failure says the device is gone (removed, or not answering).
        public var isDeviceRemoval: Bool {
            switch self {
            case .notResponding, .removed: true
            default: false
            }
        }
    }

    /// What the ISR, the DPC and the waiting threads share, under ``causes``.
    struct Causes {
        /// Causes the ISR took from the device that the DPC has not handed on yet.
        var fromISR: EduInterruptCause = []
        /// Causes handed on to waiters and not yet taken by one.
        var completed: EduInterruptCause = []
        /// Set once, by the ISR, when the device stopped answering.
        var notResponding = false
        /// Set once, by the remove routine: why the device went away.
        var removed: String?
    }

    /// How long start waits for work a previous driver left running (QEMU's DMA timer is 100 ms).
    public static let quiesceTimeout: Duration = .seconds(2)
    /// What the acknowledge routine hands the ISR when the device stopped answering: no
    /// 32-bit interrupt status can look like it.
    private static let deviceGone = UInt64.max

    /// The edu function, as opened by `DeviceOpener` or a device model.
    public let device: any DeviceAccess
    /// The runtime whose ISR, DPCs and locks the driver uses: user mode or the kernel emulation.
    public let runtime: any DriverRuntime
    /// The interrupt kind the driver was started with (MSI by default, or INTx).
    public let interruptKind: InterruptKind
    /// How long an operation waits for its interrupt before it fails.
    public var operationTimeout: Duration = .seconds(10)
    private let registers: MMIORegion
    private let causes: SpinLock<Causes>
    private let completion: WaitEvent
    private var attachment: InterruptAttachment?
    private var removalWatch: RemovalWatch?

    /// Checks the device, brings it to a known state, then enables bus mastering and one
    /// interrupt vector of `interrupt` and attaches the ISR. Waits (for a previous driver's
    /// work to end), so it must be called at passive level.
    public init(device: any DeviceAccess, runtime: any DriverRuntime, interrupt: InterruptKind = .msi) throws {
        self.device = device
        self.runtime = runtime
        self.interruptKind = interrupt
        registers = try device.region(0)
        causes = runtime.makeSpinLock("edu causes", Causes())
        completion = runtime.makeWaitEvent("edu completion")
        let identification = registers.load(EduRegister.identification)
        guard identification == EduIdentification.expected else { throw Failure.notEdu(identification: identification) }
        try runtime.mightSleep("starting the edu driver")
        try Self.quiesce(registers, within: Self.quiesceTimeout)
        do {
            try device.config.setBusMastering(true)
            let vector = try device.enableInterrupts(interrupt, count: 1)[0]
            let handOn = runtime.makeDPC("edu completion") { [unowned self] in self.handOnCauses() }
            let registers = self.registers
            attachment = try runtime.attachInterrupt(
                vector, name: "edu",
                acknowledge: { Self.acknowledge(registers) },
                isr: { [unowned self] state in
                    self.causes.withLock { shared in
                        if state == Self.deviceGone {
                            shared.notResponding = true
                        } else {
                            shared.fromISR.formUnion(EduInterruptCause(rawValue: UInt32(truncatingIfNeeded: state)))
                        }
                    }
                    handOn.queue()
                })
            removalWatch = try runtime.onRemoval(of: device, name: "edu") { [weak self] cause in self?.remove(cause) }
        } catch {
            if let attachment { runtime.detachInterrupt(attachment) }
            try? device.disableInterrupts()
            try? device.config.setBusMastering(false)
            throw error
        }
    }

    /// The remove routine, at passive level (the kernel's `.remove()`): the device is going
    /// away. Waiters wake and fail with ``Failure/removed(_:)``, later operations fail with it
    /// at once; the owner then stops the driver and closes the device, which lets the kernel
    /// finish the unbind or unplug.
    public func remove(_ cause: RemovalCause) {
        causes.withLock { shared in
            if shared.removed == nil { shared.removed = cause.description }
        }
        completion.signal()
    }

    /// Why the device was removed, once it was.
    public var removal: String? { causes.withLock { $0.removed } }

    /// Throws once the device is gone: ``Failure/notResponding`` if it was found not
    /// answering, else ``Failure/removed(_:)`` if it was removed.
    private func throwIfRemoved() throws(Failure) {
        let (gone, removed) = causes.withLock { ($0.notResponding, $0.removed) }
        if gone { throw .notResponding }
        if let removed { throw .removed(removed) }
    }

    /// Records that the device stopped answering and reports it as a surprise removal, so that
    /// the remove routine runs as for a requested one.
    private func reportNotResponding() {
        causes.withLock { $0.notResponding = true }
        device.removal?.report(.surprise("edu's registers read all ones"))
    }

    /// Waits until the device computes nothing and transfers nothing, then acknowledges every
    /// pending cause and turns the factorial interrupt off. Called before interrupts and bus
    /// mastering are enabled, so nothing a previous driver started can reach this one.
    private static func quiesce(_ registers: MMIORegion, within timeout: Duration) throws {
        let deadline = monotonicNanoseconds() + timeout.wholeNanoseconds
        while EduStatus(rawValue: registers.load(EduRegister.status)).contains(.computing)
            || EduDMACommand(rawValue: registers.load(EduRegister.dmaCommand)).contains(.start) {
            guard registers.load(EduRegister.identification) == EduIdentification.expected else { throw Failure.notResponding }
            guard monotonicNanoseconds() < deadline else {
                throw Failure.timedOut("the factorial or DMA transfer a previous driver left running to end (\(timeout))")
            }
            usleep(1000)
        }
        registers.store(0, to: EduRegister.status)
        let pending = registers.load(EduRegister.interruptStatus)
        if pending != 0 { registers.store(pending, to: EduRegister.acknowledgeInterrupt) }
    }

    /// The acknowledge routine: takes the pending causes off the device (which lowers INTx).
    private static func acknowledge(_ registers: MMIORegion) -> UInt64 {
        let pending = registers.load(EduRegister.interruptStatus)
        if pending == .max && registers.load(EduRegister.identification) == .max { return deviceGone }
        registers.store(pending, to: EduRegister.acknowledgeInterrupt)
        return UInt64(pending)
    }

    /// The DPC: hands the ISR's causes on to the waiters and wakes them.
    private func handOnCauses() {
        causes.withLock { shared in
            shared.completed.formUnion(shared.fromISR)
            shared.fromISR = []
        }
        completion.signal()
    }

    /// Waits for every cause in `cause` and takes them. A device that stopped answering (the
    /// ISR saw it, or its identification reads all ones when the wait times out) is reported
    /// as ``Failure/notResponding`` rather than as a timeout.
    private func wait(for cause: EduInterruptCause, _ what: @autoclosure () -> String) throws {
        var gone = false
        var removed: String?
        let arrived = completion.wait(timeout: operationTimeout) {
            causes.withLock { shared in
                if shared.notResponding { gone = true; return true }
                if let why = shared.removed { removed = why; return true }
                guard shared.completed.isSuperset(of: cause) else { return false }
                shared.completed.subtract(cause)
                return true
            }
        }
        if gone {
            reportNotResponding()
            throw Failure.notResponding
        }
        if let removed { throw Failure.removed(removed) }
        if !arrived && registers.load(EduRegister.identification) == .max {
            reportNotResponding()
            throw Failure.notResponding
        }
        guard arrived else { throw Failure.timedOut(what()) }
    }

    /// Whether the device still answers: false from the moment the driver found its registers
    /// reading all ones (in the ISR, or after an operation timed out); set once, kept.
    public var isResponding: Bool { !causes.withLock { $0.notResponding } }

    /// The identification register and a liveness check (the device inverts what it is given).
    public func identify() -> (identification: UInt32, alive: Bool) {
        let probe: UInt32 = 0x5A5A_0F0F
        registers.store(probe, to: EduRegister.liveness)
        return (registers.load(EduRegister.identification), registers.load(EduRegister.liveness) == ~probe)
    }

    /// n! computed by the device (modulo 2^32), completion signalled by interrupt.
    public func factorial(_ n: UInt32) throws -> UInt32 {
        try runtime.mightSleep("the factorial of \(n)")
        try throwIfRemoved()
        registers.store(EduStatus.raiseInterruptOnFactorial.rawValue, to: EduRegister.status)
        registers.store(n, to: EduRegister.factorial)
        try wait(for: .factorialDone, "the factorial of \(n)")
        return registers.load(EduRegister.factorial)
    }

    /// Raises an interrupt with `cause` through the device's raise register and waits for it.
    public func raiseInterrupt(_ cause: UInt32 = 0x1000) throws {
        try runtime.mightSleep("interrupt 0x\(String(cause, radix: 16))")
        try throwIfRemoved()
        registers.store(cause, to: EduRegister.raiseInterrupt)
        try wait(for: EduInterruptCause(rawValue: cause), "interrupt 0x\(String(cause, radix: 16))")
    }

    /// Copies `data` (at most 4 KiB) RAM → device → RAM by DMA and returns what came back.
    public func dmaRoundTrip(_ data: [UInt8]) throws -> [UInt8] {
        try runtime.mightSleep("a DMA round trip")
        try throwIfRemoved()
        let source = try device.allocateDMA(size: data.count)
        defer { source.free() }
        let destination = try device.allocateDMA(size: data.count)
        defer { destination.free() }
        try source.write(data)
        try destination.fill(0)
        try transfer(from: source.deviceAddress, to: EduIdentification.bufferAddress, count: data.count, direction: [])
        try transfer(from: EduIdentification.bufferAddress, to: destination.deviceAddress, count: data.count, direction: .toRAM)
        return try destination.read(data.count)
    }

    private func transfer(from source: UInt64, to destination: UInt64, count: Int, direction: EduDMACommand) throws {
        registers.store(source, to: EduRegister.dmaSource)
        registers.store(destination, to: EduRegister.dmaDestination)
        registers.store(UInt64(count), to: EduRegister.dmaCount)
        registers.store(EduDMACommand([.start, .raiseInterrupt]).union(direction).rawValue, to: EduRegister.dmaCommand)
        try wait(for: .dmaDone, "a DMA transfer \(direction.contains(.toRAM) ? "to RAM" : "to the device")")
    }

    /// How many times the ISR ran, and how many interrupts it covered.
    public var interruptCounts: (isrCalls: Int, interrupts: Int) {
        (attachment?.isrCalls ?? 0, attachment?.interrupts ?? 0)
    }

    /// Ends the removal watch, detaches the ISR, then disables the device's interrupts and bus
    /// mastering. Legal from the remove routine.
    public func stop() {
        removalWatch?.cancel()
        if let attachment { runtime.detachInterrupt(attachment) }
        attachment = nil
        try? device.disableInterrupts()
        try? device.config.setBusMastering(false)
    }
}

/// What the edu driver's self-test found: identical on every mode and backend.
public struct EduReport: Equatable, Sendable, CustomStringConvertible {
    /// The identification register (0x010000ed on QEMU's edu: version 1.0).
    public var identification: UInt32
    /// The liveness register gave back the complement of the value written.
    public var alive: Bool
    /// Each input and the factorial the device computed for it (modulo 2^32).
    public var factorials: [UInt32: UInt32]
    /// Interrupts raised through the raise register and seen by the DPC.
    public var interruptsRaised: Int
    /// Bytes sent to the device's buffer by DMA and read back.
    public var dmaBytes: Int
    /// The bytes read back were the bytes sent.
    public var dmaMatches: Bool

    /// A report of the given results.
    public init(identification: UInt32, alive: Bool, factorials: [UInt32: UInt32], interruptsRaised: Int,
                dmaBytes: Int, dmaMatches: Bool) {
        self.identification = identification
        self.alive = alive
        self.factorials = factorials
        self.interruptsRaised = interruptsRaised
        self.dmaBytes = dmaBytes
        self.dmaMatches = dmaMatches
    }

    /// The report as `modeless run edu` prints it: a line per check.
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
        let (identification, alive) = identify()
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
