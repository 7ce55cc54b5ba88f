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
    /// Namespace 1's block size and count, as plain values for the I/O path.
    var namespaceBlockSize = 0
    var namespaceBlockCount: UInt64 = 0
    let registers: MMIORegion
    private let doorbellStride: Int
    private let timeoutNanoseconds: UInt64
    let admin: NVMeQueuePair
    let io: NVMeQueuePair
    private var attachments: [InterruptAttachment] = []
    /// Guards what follows: completions found by the ISR or a poller, on their way to
    /// synchronous waiters and asynchronous handlers.
    let results = ConditionLock()
    /// Completions of synchronous commands, by queue and command identifier, for their waiters.
    private var finished: [UInt32: NVMeCompletion] = [:]
    /// What each I/O command identifier is waiting for (``IOSlot``), and the caller's tag of a
    /// tagged one: tables of the I/O queue's size, allocated once.
    var ioSlots: [IOSlot]
    var ioTags: [UInt64]
    /// Handlers of asynchronous I/O commands given as closures, by command identifier; and
    /// those whose command completed, waiting for the DPC to run them.
    var handlers: [UInt16: @Sendable (NVMeCompletion) -> Void] = [:]
    var ready: [(@Sendable (NVMeCompletion) -> Void, NVMeCompletion)] = []
    /// Completions of tagged I/O, waiting for the DPC (or a poller) to hand them to the
    /// completion handler. Preallocated, and swapped with `runningTagged` so that handing
    /// them over copies nothing.
    var readyTagged: [NVMeIOCompletion]
    var runningTagged: [NVMeIOCompletion]
    /// The handler tagged I/O completes to, registered once; guarded by `results`.
    var taggedHandler: (@Sendable (NVMeIOCompletion) -> Void)?
    /// Held while handlers run, so that completions are handed over one batch at a time, in order.
    let handing = ConditionLock()
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

        admin = try NVMeQueuePair(identifier: 0, entries: min(32, maxEntries), device: device, registers: registers,
                                  doorbellStride: doorbellStride)
        io = try NVMeQueuePair(identifier: 1, entries: min(64, maxEntries), device: device, registers: registers,
                               doorbellStride: doorbellStride)
        ioSlots = [IOSlot](repeating: .synchronous, count: io.entries)
        ioTags = [UInt64](repeating: 0, count: io.entries)
        readyTagged = []
        readyTagged.reserveCapacity(io.entries)
        runningTagged = []
        runningTagged.reserveCapacity(io.entries)
        try disable()
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
        namespaceBlockSize = 1 << Int(lbaShift)
        namespaceBlockCount = little(namespace, 0, UInt64.self)
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

    /// The real ISR: move new completions from the named queues to their waiters and handlers.
    private func serviceQueues(_ queues: [Int]) {
        var found = 0
        results.withLock {
            for queue in queues {
                let pair = queue == 0 ? admin : io
                found += (try? pair.drain { entry in file(entry, from: pair) }) ?? 0
            }
        }
        if found > 0 { wake?.queue() }
    }

    /// Files a completion, with `results` held: a tagged command's goes to the tagged handler's
    /// queue and a closure command's handler is made ready to run (both give their identifier
    /// back at once); a synchronous one's entry goes to the table its waiter looks in.
    func file(_ entry: NVMeCompletion, from queue: NVMeQueuePair) {
        if let tagged = takeTagged(entry, from: queue) {
            readyTagged.append(tagged)
            return
        }
        let identifier = Int(entry.identifier)
        if queue === io, identifier < ioSlots.count, ioSlots[identifier] == .closure {
            if let handler = handlers.removeValue(forKey: entry.identifier) { ready.append((handler, entry)) }
            ioSlots[identifier] = .synchronous
            io.releaseIdentifier(entry.identifier)
            return
        }
        finished[UInt32(queue.identifier) << 16 | UInt32(entry.identifier)] = entry
    }

    /// If `entry` completes a tagged I/O command, frees its identifier and returns its outcome
    /// with the caller's tag; `results` is held.
    func takeTagged(_ entry: NVMeCompletion, from queue: NVMeQueuePair) -> NVMeIOCompletion? {
        let identifier = Int(entry.identifier)
        guard queue === io, identifier < ioSlots.count, ioSlots[identifier] == .tagged else { return nil }
        ioSlots[identifier] = .synchronous
        io.releaseIdentifier(entry.identifier)
        return NVMeIOCompletion(tag: ioTags[identifier], entry)
    }

    /// The DPC (or, when polling, the poller): wake synchronous waiters and run the ready
    /// handlers of asynchronous commands, outside the ISR.
    func runCompletions() {
        handing.withLock {
            let (handlers, tagged) = results.withLock { () -> ([(@Sendable (NVMeCompletion) -> Void, NVMeCompletion)], (@Sendable (NVMeIOCompletion) -> Void)?) in
                results.broadcast()
                swap(&readyTagged, &runningTagged)
                guard !ready.isEmpty else { return ([], taggedHandler) }
                defer { ready.removeAll(keepingCapacity: true) }
                return (ready, taggedHandler)
            }
            for (handler, entry) in handlers { handler(entry) }
            if let tagged {
                for index in runningTagged.indices { tagged(runningTagged[index]) }
            }
            runningTagged.removeAll(keepingCapacity: true)
        }
    }

    // MARK: Commands

    private func execute(_ command: NVMeCommand, on queue: NVMeQueuePair, _ what: String) throws -> NVMeCompletion {
        if completion != .poll, runtime.isAtInterruptLevel {
            throw Failure.badRequest(
                "\(what) waits for its completion interrupt, which this thread would service only after the wait: "
                + "from an ISR or DPC (a completion handler) use readAsync/writeAsync or submitRead/submitWrite")
        }
        let identifier = try queue.submitLock.withLock { try queue.submit(command) }
        let key = UInt32(queue.identifier) << 16 | UInt32(identifier)
        let deadline = monotonicNanoseconds() + commandTimeout.wholeNanoseconds
        while true {
            if completion == .poll {
                _ = try queue.submitLock.withLock { try results.withLock { try queue.drain { file($0, from: queue) } } }
                runCompletions()
            }
            let done: NVMeCompletion? = results.withLock {
                if let entry = finished.removeValue(forKey: key) { return entry }
                if completion != .poll { _ = results.wait(nanoseconds: 10_000_000) }
                return finished.removeValue(forKey: key)
            }
            if let done {
                queue.releaseIdentifier(identifier)
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
        command.setBlocks(lba: lba, count: blocks)
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
        admin.free()
        io.free()
        bounce.free()
        prpList.free()
    }
}

#if canImport(Glibc)
import Glibc
#endif
