import ModelessDevice
import ModelessRuntime
import ModelessSystem

/// A driver for NVMe controllers (written against QEMU's `-device nvme`), once for every mode:
/// controller reset and enable, the admin queue, Identify, one I/O queue pair, and Read,
/// Write and Flush with PRPs and PRP lists, completed by interrupts (MSI-X, MSI or INTx,
/// through the runtime) or by polling.
public final class NVMeController: @unchecked Sendable {
    public enum Failure: Error, Equatable, CustomStringConvertible {
        case timedOut(String)
        case controllerFatal
        case commandFailed(String, statusType: UInt8, statusCode: UInt8)
        case badRequest(String)

        public var description: String {
            switch self {
            case .timedOut(let what): "timed out: \(what)"
            case .controllerFatal: "the controller reported a fatal status (CSTS.CFS)"
            case .commandFailed(let what, let type, let code): "\(what) failed: status type \(type), code 0x\(String(code, radix: 16))"
            case .badRequest(let what): what
            }
        }
    }

    /// How completions are noticed.
    public enum Completion: String, Sendable, CaseIterable {
        case msix, msi, intx, poll
    }

    /// What Identify Controller and Identify Namespace 1 said.
    public struct Identity: Sendable, Equatable {
        public var vendorID: UInt16
        public var serialNumber: String
        public var modelNumber: String
        public var firmwareRevision: String
        public var namespaceCount: UInt32
        /// The largest transfer in bytes (MDTS), or nil when unlimited.
        public var maximumTransfer: Int?
        public var blockSize: Int
        public var blockCount: UInt64
    }

    public let device: any DeviceAccess
    public let runtime: any DriverRuntime
    public let completion: Completion
    public private(set) var identity: Identity!
    private let registers: MMIORegion
    private let doorbellStride: Int
    private let timeoutNanoseconds: UInt64
    private var admin: NVMeQueuePair!
    private var io: NVMeQueuePair!
    private var attachments: [InterruptAttachment] = []
    /// Completions found by the ISR, by queue and command identifier, handed to waiters.
    private let results = ConditionLock()
    private var finished: [UInt32: NVMeCompletion] = [:]
    /// Handlers of asynchronous I/O commands, by command identifier; and those whose command
    /// completed, waiting for the DPC to run them.
    private var handlers: [UInt16: @Sendable (NVMeCompletion) -> Void] = [:]
    private var ready: [(@Sendable (NVMeCompletion) -> Void, NVMeCompletion)] = []
    private var wake: DeferredProcedureCall?
    private let bounce: DMABuffer
    private let prpList: DMABuffer
    /// The largest transfer this driver issues: MDTS, the PRP list page and the bounce buffer bound it.
    public private(set) var maximumTransfer = 128 * 1024

    /// How long a command may take before it is reported as timed out.
    public let commandTimeout: Duration

    public init(device: any DeviceAccess, runtime: any DriverRuntime, completion: Completion = .msix,
                commandTimeout: Duration = .seconds(5)) throws {
        self.commandTimeout = commandTimeout
        self.device = device
        self.runtime = runtime
        self.completion = completion
        registers = try device.region(0)
        let capabilities = try registers.read64(at: NVMeRegister.capabilities)
        doorbellStride = 4 << Int((capabilities >> 32) & 0xF)
        timeoutNanoseconds = max(1, (capabilities >> 24) & 0xFF) * 500_000_000
        let maxEntries = Int(capabilities & 0xFFFF) + 1
        try device.config.setCommand([.memorySpace, .busMaster], true)
        bounce = try device.allocateDMA(size: maximumTransfer)
        prpList = try device.allocateDMA(size: 4096)

        try disable()
        admin = try NVMeQueuePair(identifier: 0, entries: min(32, maxEntries), device: device, registers: registers,
                                  doorbellStride: doorbellStride)
        try registers.write32(UInt32(admin.entries - 1) << 16 | UInt32(admin.entries - 1), at: NVMeRegister.adminQueueAttributes)
        try registers.write64(admin.submissions.deviceAddress, at: NVMeRegister.adminSubmissionQueue)
        try registers.write64(admin.completions.deviceAddress, at: NVMeRegister.adminCompletionQueue)
        try setUpInterrupts()
        // EN, NVM command set, 4 KiB pages, 64-byte submission and 16-byte completion entries.
        try registers.write32(1 | 6 << 16 | 4 << 20, at: NVMeRegister.configuration)
        try waitForReady(true)

        let controller = try identify(cns: 1, namespace: 0)
        let mdts = controller[77]
        if mdts > 0 { maximumTransfer = min(maximumTransfer, 4096 << Int(mdts)) }
        _ = try adminCommand(setNumberOfQueues(), "Set Features (Number of Queues)")
        io = try NVMeQueuePair(identifier: 1, entries: min(64, maxEntries), device: device, registers: registers,
                               doorbellStride: doorbellStride)
        var createCompletion = NVMeCommand(opcode: NVMeOpcode.createIOCompletionQueue)
        createCompletion.setPRPs(io.completions.deviceAddress, 0)
        createCompletion.dwords[10] = UInt32(io.entries - 1) << 16 | 1
        let vector: UInt32 = completion == .msix ? 1 : 0
        createCompletion.dwords[11] = vector << 16 | (completion == .poll ? 0 : 0b10) | 1  // IV, IEN, PC
        _ = try adminCommand(createCompletion, "Create I/O Completion Queue")
        var createSubmission = NVMeCommand(opcode: NVMeOpcode.createIOSubmissionQueue)
        createSubmission.setPRPs(io.submissions.deviceAddress, 0)
        createSubmission.dwords[10] = UInt32(io.entries - 1) << 16 | 1
        createSubmission.dwords[11] = 1 << 16 | 1  // CQID 1, physically contiguous
        _ = try adminCommand(createSubmission, "Create I/O Submission Queue")

        let namespace = try identify(cns: 0, namespace: 1)
        let format = Int(namespace[26] & 0xF)
        let lbaShift = namespace[128 + 4 * format + 2]
        func text(_ range: Range<Int>) -> String {
            String(decoding: controller[range], as: UTF8.self).trimmingBlanks()
        }
        func little<T: FixedWidthInteger>(_ bytes: [UInt8], _ offset: Int, _: T.Type) -> T {
            (0..<MemoryLayout<T>.size).reduce(T(0)) { $0 | T(bytes[offset + $1]) << (8 * $1) }
        }
        identity = Identity(vendorID: little(controller, 0, UInt16.self), serialNumber: text(4..<24),
                            modelNumber: text(24..<64), firmwareRevision: text(64..<72),
                            namespaceCount: little(controller, 516, UInt32.self),
                            maximumTransfer: mdts > 0 ? 4096 << Int(mdts) : nil,
                            blockSize: 1 << Int(lbaShift), blockCount: little(namespace, 0, UInt64.self))
    }

    // MARK: Controller state

    private func disable() throws {
        let configuration = try registers.read32(at: NVMeRegister.configuration)
        if configuration & 1 != 0 { try registers.write32(configuration & ~1, at: NVMeRegister.configuration) }
        try waitForReady(false)
    }

    private func waitForReady(_ ready: Bool) throws {
        let deadline = monotonicNanoseconds() + timeoutNanoseconds
        while true {
            let status = try registers.read32(at: NVMeRegister.status)
            if status & 0b10 != 0 && ready { throw Failure.controllerFatal }
            if (status & 1 != 0) == ready { return }
            guard monotonicNanoseconds() < deadline else {
                throw Failure.timedOut("CSTS.RDY to become \(ready ? 1 : 0)")
            }
            usleep(1000)
        }
    }

    private func setUpInterrupts() throws {
        guard completion != .poll else { return }
        let kind: InterruptKind = completion == .msix ? .msix : completion == .msi ? .msi : .intx
        let vectors = try device.enableInterrupts(kind, count: kind == .msix ? 2 : 1)
        wake = runtime.makeDPC("nvme completion") { [unowned self] in self.runCompletions() }
        for vector in vectors {
            // With MSI-X vector 0 serves the admin queue and vector 1 the I/O queue; a single
            // MSI or INTx vector serves both. NVMe has no cause register: the ISR looks at the queues.
            let queues: [Int] = kind == .msix ? [vector.index] : [0, 1]
            attachments.append(try runtime.attachInterrupt(vector, name: "nvme\(vector.index)", acknowledge: { 0 }) {
                [unowned self] _ in self.serviceQueues(queues)
            })
        }
    }

    /// The real ISR: move new completions from the named queues to the waiters' table.
    private func serviceQueues(_ queues: [Int]) {
        var found: [(UInt16, NVMeCompletion)] = []
        for queue in queues {
            guard let pair = queue == 0 ? admin : io else { continue }
            for entry in (try? pair.drain()) ?? [] { found.append((pair.identifier, entry)) }
        }
        guard !found.isEmpty else { return }
        file(found)
        wake?.queue()
    }

    /// Files completions: an asynchronous command's handler is made ready to run; a
    /// synchronous one's entry goes to the table its waiter looks in.
    private func file(_ found: [(UInt16, NVMeCompletion)]) {
        results.withLock {
            for (queue, entry) in found {
                if queue == 1, let handler = handlers.removeValue(forKey: entry.identifier) {
                    ready.append((handler, entry))
                } else {
                    finished[UInt32(queue) << 16 | UInt32(entry.identifier)] = entry
                }
            }
        }
    }

    /// The DPC (or, when polling, the poller): wake synchronous waiters and run the ready
    /// handlers of asynchronous commands, outside the ISR.
    private func runCompletions() {
        let handlers = results.withLock { () -> [(@Sendable (NVMeCompletion) -> Void, NVMeCompletion)] in
            results.broadcast()
            defer { ready.removeAll(keepingCapacity: true) }
            return ready
        }
        for (handler, entry) in handlers { handler(entry) }
    }

    // MARK: Commands

    private func execute(_ command: NVMeCommand, on queue: NVMeQueuePair, _ what: String) throws -> NVMeCompletion {
        let identifier = try queue.submitLock.withLock { try queue.submit(command) }
        let key = UInt32(queue.identifier) << 16 | UInt32(identifier)
        let timeout = UInt64(commandTimeout.components.seconds) * 1_000_000_000
            + UInt64(commandTimeout.components.attoseconds / 1_000_000_000)
        let deadline = monotonicNanoseconds() + timeout
        while true {
            if completion == .poll {
                let entries = try queue.submitLock.withLock { try queue.drain() }
                file(entries.map { (queue.identifier, $0) })
                runCompletions()
            }
            let done: NVMeCompletion? = results.withLock {
                if let entry = finished.removeValue(forKey: key) { return entry }
                if completion != .poll { _ = results.wait(nanoseconds: 10_000_000) }
                return finished.removeValue(forKey: key)
            }
            if let done {
                guard done.succeeded else {
                    throw Failure.commandFailed(what, statusType: done.statusType, statusCode: done.statusCode)
                }
                return done
            }
            if try registers.read32(at: NVMeRegister.status) & 0b10 != 0 { throw Failure.controllerFatal }
            guard monotonicNanoseconds() < deadline else { throw Failure.timedOut(what) }
        }
    }

    private func adminCommand(_ command: NVMeCommand, _ what: String) throws -> NVMeCompletion {
        try execute(command, on: admin, what)
    }

    private func setNumberOfQueues() -> NVMeCommand {
        var command = NVMeCommand(opcode: NVMeOpcode.setFeatures)
        command.dwords[10] = 0x07  // Number of Queues
        command.dwords[11] = 0     // one submission and one completion queue (0-based)
        return command
    }

    private func identify(cns: UInt32, namespace: UInt32) throws -> [UInt8] {
        var command = NVMeCommand(opcode: NVMeOpcode.identify, namespace: namespace)
        command.setPRPs(bounce.deviceAddress, 0)
        command.dwords[10] = cns
        _ = try adminCommand(command, "Identify (CNS \(cns))")
        return try bounce.read(4096)
    }

    /// Points a command's data pointer at `bytes` of the bounce buffer: PRP1 the first page;
    /// PRP2 the second page, or a PRP list of the pages after the first.
    private func setDataPointer(_ command: inout NVMeCommand, bytes: Int) throws {
        let pages = (bytes + 4095) / 4096
        let base = bounce.deviceAddress
        switch pages {
        case 1: command.setPRPs(base, 0)
        case 2: command.setPRPs(base, base + 4096)
        default:
            for page in 1..<pages { try prpList.store64(base + UInt64(page * 4096), at: (page - 1) * 8) }
            command.setPRPs(base, prpList.deviceAddress)
        }
    }

    private func transfer(_ opcode: UInt8, lba: UInt64, blocks: Int) throws {
        let bytes = blocks * identity.blockSize
        guard blocks > 0, bytes <= maximumTransfer else {
            throw Failure.badRequest("a transfer is 1 to \(maximumTransfer / identity.blockSize) blocks, not \(blocks)")
        }
        guard lba + UInt64(blocks) <= identity.blockCount else {
            throw Failure.badRequest("blocks \(lba)..<\(lba + UInt64(blocks)) are beyond the namespace's \(identity.blockCount)")
        }
        var command = NVMeCommand(opcode: opcode, namespace: 1)
        try setDataPointer(&command, bytes: bytes)
        command.dwords[10] = UInt32(truncatingIfNeeded: lba)
        command.dwords[11] = UInt32(truncatingIfNeeded: lba >> 32)
        command.dwords[12] = UInt32(blocks - 1)
        _ = try execute(command, on: io, opcode == NVMeOpcode.read ? "Read" : "Write")
    }

    /// Reads `blocks` blocks from `lba`. One request at a time (the bounce buffer is shared).
    public func read(lba: UInt64, blocks: Int) throws -> [UInt8] {
        try ioLock.withLock {
            try transfer(NVMeOpcode.read, lba: lba, blocks: blocks)
            return try bounce.read(blocks * identity.blockSize)
        }
    }

    /// Writes whole blocks of `data` at `lba`.
    public func write(lba: UInt64, _ data: [UInt8]) throws {
        guard data.count % identity.blockSize == 0 else {
            throw Failure.badRequest("\(data.count) bytes is not a whole number of \(identity.blockSize)-byte blocks")
        }
        try ioLock.withLock {
            try bounce.write(data)
            try transfer(NVMeOpcode.write, lba: lba, blocks: data.count / identity.blockSize)
        }
    }

    /// Commits written data to stable media.
    public func flush() throws {
        try ioLock.withLock { _ = try execute(NVMeCommand(opcode: NVMeOpcode.flush, namespace: 1), on: io, "Flush") }
    }

    private let ioLock = ConditionLock()

    // MARK: Asynchronous I/O

    /// Starts reading `blocks` blocks at `lba` into `chunk` of `pool` (at most two pages) and
    /// returns at once; `completion` runs later, from the completion DPC (or from
    /// ``pollCompletions()`` when polling), with the outcome. Up to the I/O queue's size less
    /// one may be in flight.
    public func readAsync(lba: UInt64, blocks: Int, into chunk: DMAPool.Chunk, of pool: DMAPool,
                          completion: @escaping @Sendable (Result<Void, Failure>) -> Void) throws {
        let bytes = blocks * identity.blockSize
        guard blocks > 0, bytes <= min(pool.chunkSize, 8192), chunk.deviceAddress % 4096 == 0 else {
            throw Failure.badRequest("an asynchronous read fills one page-aligned chunk of at most two pages")
        }
        guard lba + UInt64(blocks) <= identity.blockCount else {
            throw Failure.badRequest("blocks \(lba)..<\(lba + UInt64(blocks)) are beyond the namespace's \(identity.blockCount)")
        }
        var command = NVMeCommand(opcode: NVMeOpcode.read, namespace: 1)
        command.setPRPs(chunk.deviceAddress, bytes > 4096 ? chunk.deviceAddress + 4096 : 0)
        command.dwords[10] = UInt32(truncatingIfNeeded: lba)
        command.dwords[11] = UInt32(truncatingIfNeeded: lba >> 32)
        command.dwords[12] = UInt32(blocks - 1)
        let handler: @Sendable (NVMeCompletion) -> Void = { entry in
            completion(entry.succeeded ? .success(())
                       : .failure(.commandFailed("Read", statusType: entry.statusType, statusCode: entry.statusCode)))
        }
        _ = try io.submitLock.withLock {
            try io.submit(command) { identifier in results.withLock { handlers[identifier] = handler } }
        }
    }

    /// When polling: takes new I/O completions and runs their handlers. Returns how many.
    @discardableResult
    public func pollCompletions() throws -> Int {
        let entries = try io.submitLock.withLock { try io.drain() }
        file(entries.map { (io.identifier, $0) })
        runCompletions()
        return entries.count
    }

    /// The I/O queue's size: at most this many less one commands can be in flight.
    public var queueEntries: Int { io.entries }

    /// How many times the ISRs ran.
    public var isrCalls: Int { attachments.reduce(0) { $0 + $1.isrCalls } }

    /// Detaches the ISRs, disables the controller and frees the queues.
    public func stop() {
        for attachment in attachments { runtime.detachInterrupt(attachment) }
        attachments.removeAll()
        try? device.disableInterrupts()
        try? disable()
        admin?.free()
        io?.free()
        bounce.free()
        prpList.free()
    }
}

#if canImport(Glibc)
import Glibc
#endif
