#if canImport(Glibc)
import Glibc
#endif
import ModelessBus
import ModelessDevice
import ModelessRuntime
import ModelessSystem
import Synchronization

/// A driver for NVMe controllers (written against QEMU's `-device nvme`), once for every mode.
///
/// Start: confirm that an NVMe controller answers (CAP, VS), reset it to a known state (CC.EN=0,
/// CSTS.RDY=0) before bus mastering and interrupts, set up the admin queue, enable, Identify
/// the controller and its active namespaces, and create the I/O queue pairs: with MSI-X one
/// per CPU (as many as the controller grants), each on its own vector where the controller
/// offers enough (else sharing them; the admin queue shares vector 0 with the first), and
/// otherwise one; each as large as CAP.MQES allows, up to ``maximumQueueEntries``. I/O: Read,
/// Write and Flush on any active namespace, synchronous through a bounce buffer or
/// asynchronous into `DMAPool` chunks, submitted to the calling CPU's queue, completed by
/// interrupts (MSI-X, MSI or INTx, through the runtime) or by polling. Doorbells are batched:
/// one completion head write per drained batch, and one submission tail write per batch of
/// submissions made while completions are handed over (or inside ``batchSubmissions(_:)``).
///
/// Synchronization follows the kernel's rules: the ISR and the DPC share each queue's state
/// through a `SpinLock`; synchronous callers sleep on a `WaitEvent`; the bounce buffer is
/// taken one request at a time under a `PassiveLock`. A controller that stops answering is
/// reported once: ``failure`` is set, commands in flight fail with it, and every later call
/// gets it at once.
public final class NVMeController: @unchecked Sendable {
    /// How completions are noticed.
    public enum Completion: String, Sendable, CaseIterable {
        case msix, msi, intx, poll
    }

    /// An active namespace: its ID and LBA format.
    public struct Namespace: Sendable, Equatable {
        /// NSID.
        public var identifier: UInt32
        /// Bytes per block (the data size of the LBA format in use).
        public var blockSize: Int
        /// NSZE, in blocks.
        public var blockCount: UInt64
        /// Metadata bytes per block of the format in use (0 for most).
        public var metadataSize: Int

        /// A namespace `identifier` of `blockCount` blocks of `blockSize` bytes, with `metadataSize`
        /// bytes of metadata per block.
        public init(identifier: UInt32, blockSize: Int, blockCount: UInt64, metadataSize: Int = 0) {
            self.identifier = identifier
            self.blockSize = blockSize
            self.blockCount = blockCount
            self.metadataSize = metadataSize
        }
    }

    /// What Identify Controller and the active namespaces' Identify Namespace said.
    public struct Identity: Sendable, Equatable {
        /// VID: the PCI vendor ID the controller reports.
        public var vendorID: UInt16
        /// SN, with the blanks that pad it removed.
        public var serialNumber: String
        /// MN, with the blanks that pad it removed.
        public var modelNumber: String
        /// FR, with the blanks that pad it removed.
        public var firmwareRevision: String
        /// NN: the highest namespace ID the controller supports (not how many are active).
        public var namespaceLimit: UInt32
        /// The active namespaces, by increasing ID.
        public var namespaces: [Namespace]
        /// The largest transfer in bytes (MDTS), or nil when unlimited.
        public var maximumTransfer: Int?
        /// The first active namespace's block size and count (0 when none is active).
        public var blockSize: Int
        /// The first active namespace's block count (0 when none is active).
        public var blockCount: UInt64
    }

    /// The controller's PCI function, as opened by `DeviceOpener` or a device model.
    public let device: any DeviceAccess
    /// The runtime whose ISR, DPCs and locks the driver uses: user mode or the kernel emulation.
    public let runtime: any DriverRuntime
    /// How completions are noticed: an interrupt of this kind, or polling.
    public let completion: Completion
    /// How long a command may take before it is reported as timed out.
    public let commandTimeout: Duration
    /// What Identify said at start; set before the initializer returns, so never nil afterwards.
    public private(set) var identity: Identity!
    /// The largest transfer this driver issues: MDTS, the PRP list page and the bounce buffer bound it.
    public private(set) var maximumTransfer = 128 * 1024
    /// How long each step of the start took, in order (`reset 3.1 ms, buffers 12.0 ms, ...`):
    /// for timing a takeover.
    public private(set) var startSteps = ""
    private var stepStart: UInt64 = 0
    private func step(_ name: String) {
        let now = monotonicNanoseconds()
        startSteps += Self.stepText(name, now - stepStart, first: startSteps.isEmpty)
        stepStart = now
    }
    private static func stepText(_ name: String, _ nanoseconds: UInt64, first: Bool) -> String {
        (first ? "" : ", ") + name + " " + millisecondsText(nanoseconds) + " ms"
    }

    /// Identify Controller's data as read at start (what ``optionalCommands()`` reads).
    private(set) var identifyControllerData = NVMeIdentifyData([UInt8](repeating: 0, count: NVMeIdentifyData.size))
    /// The command register as the start last wrote it (bus mastering off, memory space on).
    private var commandRegister = ConfigSpaceAccess.Command()
    /// How many interrupt vectors the start enabled (1 when polling).
    private var vectorCount = 1

    /// How the start went with a predecessor's saved state: nil when there was none to look at
    /// (no kept memory handed over), `resumed …` (the controller picked up without a reset,
    /// with what the drain took) or `refused: …` (why, and the controller was reset instead).
    public private(set) var resumption: String?
    /// The queues, their saved state and the bounce buffer, freed when the controller stops.
    private let queueMemory: NVMeQueueMemory

    /// The memory page size (CC.MPS = 0): PRP entries, MDTS and queue memory count in it.
    static let pageSize = 4096

    let registers: MMIORegion
    let capabilities: NVMeCapabilities
    let admin: NVMeQueuePair
    /// The I/O queue pairs (IDs 1, 2, …); the first ``ioQueueCount`` were created on the controller.
    let ioQueues: [NVMeQueuePair]
    /// The same queues unretained, for the I/O path: reading one takes no reference (``ioQueues`` keeps them).
    let ioQueueReferences: [Unmanaged<NVMeQueuePair>]
    /// How many I/O queue pairs the controller granted and this driver created (set once, at start).
    private let activeQueues = Atomic<Int>(1)
    /// The I/O queue pairs this driver asks for: one per CPU with MSI-X (at most this many), one otherwise.
    public static let maximumIOQueues = 16
    /// The largest I/O queue this driver creates, in entries (CAP.MQES + 1 when smaller).
    public static let maximumQueueEntries = 1024
    /// The active namespaces and the first of them, the default, as plain values for the I/O path.
    /// Written only at start, before any I/O, so read without dynamic exclusivity checks.
    @exclusivity(unchecked) private(set) var namespaces: [Namespace] = []
    @exclusivity(unchecked) private(set) var defaultNamespace = Namespace(identifier: 0, blockSize: 0, blockCount: 0, metadataSize: 0)
    /// Signalled when synchronous commands complete and when the controller is lost.
    let completed: WaitEvent
    /// Hand tagged and closure completions over, outside the ISR: one DPC per I/O queue.
    private(set) var handOvers: [DeferredProcedureCall] = []
    /// The same DPCs unretained, for the ISR (``handOvers`` keeps them).
    private(set) var handOverReferences: [Unmanaged<DeferredProcedureCall>] = []
    private var attachments: [InterruptAttachment] = []
    private var removalWatch: RemovalWatch?
    /// Called by the remove routine after the controller failed everything (the device's owner
    /// ending a service, say).
    private let removalObserver: SpinLock<(@Sendable (RemovalCause) -> Void)?>
    /// The handler tagged I/O completes to, registered once.
    let taggedHandler: SpinLock<TaggedHandlers>

    /// The handlers registered for tagged I/O: all of them kept until the controller goes, so
    /// that the completion DPC can call the current one through an unretained reference
    /// (taking no reference per completion) even if another is registered meanwhile.
    struct TaggedHandlers {
        var registered: [TaggedHandler] = []
        var current: Unmanaged<TaggedHandler>?
    }

    /// A registered handler of tagged completions.
    final class TaggedHandler: Sendable {
        let call: @Sendable (NVMeIOCompletion) -> Void

        init(_ call: @escaping @Sendable (NVMeIOCompletion) -> Void) { self.call = call }
    }
    /// The bounce buffer and its PRP list page, one synchronous request at a time.
    let bounce: PassiveLock<BounceBuffer>
    /// Why the controller can no longer be used, once it cannot; `isLost` is its fast check.
    let failureState: SpinLock<Failure?>
    let isLost = Atomic<Bool>(false)
    /// Empty polls since the controller's status was last read.
    let emptyPolls = Atomic<Int>(0)

    struct BounceBuffer {
        let data: DMABuffer
        let prpList: DMABuffer
    }

    /// Starts the controller on `device` (BAR 0). Fails at once, with ``Failure/notResponding(_:)``
    /// or ``Failure/notAnNVMeController(_:)``, when the device does not answer as an NVMe
    /// controller; and with ``Failure/timedOut(_:)`` when it does not follow CC.EN within CAP.TO.
    /// `ioQueueLimit` caps how many I/O queue pairs it asks for with MSI-X (nil: one per CPU, up
    /// to ``maximumIOQueues``); without MSI-X it asks for one. `memory`, made ahead for the same
    /// device, completion and limit, is used instead of allocating (and owned from then on,
    /// also when the start fails); memory made for anything else is freed and new memory
    /// allocated.
    public init(device: any DeviceAccess, runtime: any DriverRuntime, completion: Completion = .msix,
                commandTimeout: Duration = .seconds(5), ioQueueLimit: Int? = nil, memory: NVMeQueueMemory? = nil) throws {
        if let ioQueueLimit, !(1...Self.maximumIOQueues).contains(ioQueueLimit) {
            memory?.free()
            throw Failure.badRequest("an I/O queue limit of \(ioQueueLimit): give 1 to \(Self.maximumIOQueues), or none for one queue per CPU")
        }
        self.device = device
        self.runtime = runtime
        self.completion = completion
        self.commandTimeout = commandTimeout
        var stepsSoFar = ""
        var stepMark = monotonicNanoseconds()
        func mark(_ name: String) {
            let now = monotonicNanoseconds()
            stepsSoFar += Self.stepText(name, now - stepMark, first: stepsSoFar.isEmpty)
            stepMark = now
        }
        let command: ConfigSpaceAccess.Command
        do {
            registers = try device.region(0)
            command = try device.config.command()
            capabilities = try Self.probe(registers)
        } catch {
            memory?.free()
            throw error
        }
        var madeAhead = false
        if let memory { madeAhead = memory.take(completion: completion, ioQueueLimit: ioQueueLimit, capabilities: capabilities) }
        if !madeAhead { memory?.free() }
        let queueMemory = try madeAhead ? memory! : NVMeQueueMemory(device: device, registers: registers, capabilities: capabilities, runtime: runtime,
                                                                     completion: completion, ioQueueLimit: ioQueueLimit)
        if !madeAhead { _ = queueMemory.take(completion: completion, ioQueueLimit: ioQueueLimit, capabilities: capabilities) }
        self.queueMemory = queueMemory
        bounce = runtime.makePassiveLock("nvme bounce buffer", queueMemory.bounce)
        admin = queueMemory.admin
        ioQueues = queueMemory.ioQueues
        ioQueueReferences = queueMemory.ioQueues.map { Unmanaged.passUnretained($0) }
        mark(madeAhead ? "queue memory (made ahead)" : "queue memory")
        completed = runtime.makeWaitEvent("nvme completion")
        taggedHandler = runtime.makeSpinLock("nvme tagged handler", TaggedHandlers())
        failureState = runtime.makeSpinLock("nvme failure", nil)
        removalObserver = runtime.makeSpinLock("nvme removal observer", nil)
        startSteps = stepsSoFar
        stepStart = stepMark
        do {
            // Resume the controller as a predecessor left it (its queues in kept memory handed
            // over, bus mastering still on), or else start it from a reset.
            var resumed = false
            if queueMemory.inherited {
                if let refusal = try resume(command: command, memory: queueMemory) {
                    resumption = "refused: \(refusal)"
                } else {
                    resumed = true
                }
            }
            if !resumed {
                try NVMeKeptHeader.clear(in: queueMemory.kept)
                // A known state before the device may touch memory: no bus mastering while a
                // predecessor's queues may still be live; memory space on; then the reset.
                // One write of the command register, only when it changes (each configuration
                // access is a system call, slow under emulation).
                let current = resumption == nil ? command : try device.config.command()
                let wanted = current.subtracting(.busMaster).union(.memorySpace)
                if wanted != current { try device.config.write16(wanted.rawValue, at: PCIConfigSpace.Offset.command) }
                commandRegister = wanted
                try Self.reset(registers, capabilities)
                queueMemory.freeRetired()
                if queueMemory.inherited {
                    try admin.clear()
                    for queue in ioQueues { try queue.clear() }
                }
                step("reset")
                try start()
            }
            removalWatch = try runtime.onRemoval(of: device, name: "nvme") { [weak self] cause in self?.remove(cause) }
        } catch {
            stop()
            throw error
        }
    }

    /// The remove routine, at passive level (the kernel's `.remove()`): the controller is going
    /// away. Commands in flight fail with ``Failure/removed(_:)`` (synchronous waiters wake,
    /// tagged and closure commands complete with it) and every later request fails with it at
    /// once; the owner then stops the controller and closes the device, which lets the kernel
    /// finish the unbind or unplug. A controller found lost first keeps that failure.
    public func remove(_ cause: RemovalCause) {
        lose(.removed(cause.description))
        removalObserver.withLock { $0 }?(cause)
    }

    /// Calls `observe` (at passive level) once the controller was removed, after the remove
    /// routine failed what was in flight: how the device's owner learns to end its service.
    public func onRemoval(_ observe: @escaping @Sendable (RemovalCause) -> Void) {
        removalObserver.withLock { $0 = observe }
    }

    // MARK: Probe and reset

    /// The admin queue's entries (fewer when CAP.MQES allows fewer).
    static let adminQueueEntries = 32
    /// The bounce buffer's size: the largest synchronous transfer.
    static let bounceBytes = 128 * 1024

    /// How many I/O queue pairs a controller started with `completion` and `ioQueueLimit` asks for.
    static func wantedIOQueues(_ completion: Completion, _ ioQueueLimit: Int?) -> Int {
        completion == .msix ? min(SystemThread.cpuCount, ioQueueLimit ?? maximumIOQueues) : 1
    }

    /// Reads CAP and VS and refuses a device that does not answer, or not as an NVMe controller.
    static func probe(_ registers: MMIORegion) throws(Failure) -> NVMeCapabilities {
        let capabilities = NVMeCapabilities(rawValue: registers.load(NVMeRegister.capabilities))
        let version = NVMeVersion(rawValue: registers.load(NVMeRegister.version))
        if capabilities.isAllOnes || registers.health.faultCount > 0 {
            let why = registers.health.firstFault.map { "\($0)" } ?? "CAP reads all-ones"
            throw .notResponding("\(why); check that the device is present, powered and bound")
        }
        guard capabilities.queueEntryLimit >= 2 else {
            throw .notAnNVMeController("CAP.MQES is 0 (queues need at least two entries)")
        }
        guard capabilities.supportsNVMCommandSet else {
            throw .notAnNVMeController("CAP.CSS does not offer the NVM command set")
        }
        guard version.major >= 1, version.rawValue != .max else {
            throw .notAnNVMeController("VS reads 0x\(String(version.rawValue, radix: 16)), not an NVMe version")
        }
        return capabilities
    }

    /// CC.EN=0, then CSTS.RDY=0 within CAP.TO: the controller drops every queue and command a
    /// predecessor left, and this run starts from nothing.
    private static func reset(_ registers: MMIORegion, _ capabilities: NVMeCapabilities) throws(Failure) {
        var configuration = NVMeConfiguration(rawValue: registers.load(NVMeRegister.configuration))
        if configuration.contains(.enable) {
            configuration.remove(.enable)
            registers.store(configuration.rawValue, to: NVMeRegister.configuration)
        }
        try waitForReady(false, registers, capabilities)
    }

    private static func waitForReady(_ ready: Bool, _ registers: MMIORegion, _ capabilities: NVMeCapabilities) throws(Failure) {
        let deadline = monotonicNanoseconds() + capabilities.readyTimeout.wholeNanoseconds
        while true {
            let status = NVMeStatusRegister(rawValue: registers.load(NVMeRegister.status))
            if status.isAllOnes { throw .notResponding("CSTS reads all-ones while waiting for CSTS.RDY=\(ready ? 1 : 0)") }
            if ready && status.contains(.fatal) { throw .controllerFatal }
            if status.contains(.ready) == ready { return }
            guard monotonicNanoseconds() < deadline else {
                throw .timedOut("CSTS.RDY to become \(ready ? 1 : 0) within CAP.TO (\(capabilities.readyTimeout))")
            }
            usleep(1000)
        }
    }

    // MARK: Start

    private func start() throws {
        registers.store(NVMeAdminQueueAttributes(submissionEntries: admin.entries, completionEntries: admin.entries).rawValue,
                        to: NVMeRegister.adminQueueAttributes)
        registers.store(admin.submissions.deviceAddress, to: NVMeRegister.adminSubmissionQueue)
        registers.store(admin.completions.deviceAddress, to: NVMeRegister.adminCompletionQueue)
        // The command register as the start left it, with bus mastering: one write, no read.
        try device.config.write16(commandRegister.union(.busMaster).rawValue, at: PCIConfigSpace.Offset.command)
        vectorCount = try setUpInterrupts()
        step("interrupts")

        var configuration = NVMeConfiguration.enable
        configuration[NVMeConfiguration.commandSet] = 0          // NVM
        configuration[NVMeConfiguration.memoryPageSize] = 0     // 4 KiB
        configuration[NVMeConfiguration.arbitration] = 0        // round robin
        configuration[NVMeConfiguration.submissionEntrySize] = NVMeCommand.entrySizeShift
        configuration[NVMeConfiguration.completionEntrySize] = NVMeCompletion.entrySizeShift
        registers.store(configuration.rawValue, to: NVMeRegister.configuration)
        try Self.waitForReady(true, registers, capabilities)
        step("enable")

        // The start's admin commands go in rounds of commands that do not depend on one
        // another (each round costs one wait, not one per command): Identify Controller, the
        // queue count and the active namespace list; then the I/O completion queues with the
        // first namespaces' Identify; then the submission queues with the next ones.
        let version = NVMeVersion(rawValue: registers.load(NVMeRegister.version))
        let listsNamespaces = version >= .activeNamespaceList
        let (controllerData, granted, listed) = try bounce.withLock { buffers throws -> (NVMeIdentifyData, UInt32, [UInt32]?) in
            var commands: [(NVMeCommand, String)] = [
                (.identify(.controller, into: buffers.data.deviceAddress), "Identify (CNS \(NVMeIdentifyStructure.controller.rawValue), namespace 0)"),
                (.setNumberOfQueues(submission: ioQueues.count, completion: ioQueues.count), "Set Features (Number of Queues)"),
            ]
            if listsNamespaces {
                commands.append((.identify(.activeNamespaces, into: buffers.data.deviceAddress + UInt64(Self.pageSize)),
                                 "Identify (CNS \(NVMeIdentifyStructure.activeNamespaces.rawValue), namespace 0)"))
            }
            let done = try executeTogether(commands, on: admin)
            let list = listsNamespaces
                ? NVMeActiveNamespaceList(data: NVMeIdentifyData(try buffers.data.read(NVMeIdentifyData.size, at: Self.pageSize))).identifiers : nil
            return (NVMeIdentifyData(try buffers.data.read(NVMeIdentifyData.size)), done[1].result, list)
        }
        identifyControllerData = controllerData
        let controller = NVMeIdentifyController(data: controllerData)
        step("identify")
        let mdts = controller.maximumDataTransferSize
        if mdts > 0 { maximumTransfer = min(maximumTransfer, Self.pageSize << Int(mdts)) }
        // Dword 0 of the Set Features completion: NSQA in 15:0, NCQA in 31:16, both 0-based.
        let created = max(1, min(ioQueues.count, Int(granted & 0xFFFF) + 1, Int(granted >> 16) + 1))
        activeQueues.store(created, ordering: .releasing)
        let identifiers = listed ?? Array(1...max(1, min(controller.namespaceLimit, 1024)))
        let vectors = vectorCount
        let queueRounds: [[(NVMeCommand, String)]] = [
            ioQueues.prefix(created).enumerated().map { index, queue in
                (.createIOCompletionQueue(queue, vector: index % vectors, interrupts: completion != .poll), "Create I/O Completion Queue \(queue.identifier)")
            },
            ioQueues.prefix(created).map { queue in (.createIOSubmissionQueue(queue), "Create I/O Submission Queue \(queue.identifier)") },
        ]
        namespaces = try startRounds(queueRounds, identifying: identifiers)
        step("I/O queues and namespaces")
        if let first = namespaces.first { defaultNamespace = first }
        identity = makeIdentity(controller)
        try saveHeader()
    }

    /// Resumes the controller from the saved state in `memory` (a predecessor's, handed over):
    /// after ``resumable(_:registers:command:completion:vectorsOffered:)``'s checks, drains the
    /// commands it left in flight on every queue, then attaches the interrupts and takes what
    /// the predecessor's start found (namespaces, Identify data) from the saved header. Nil
    /// when resumed; otherwise why not, and the caller resets the controller. Throws only
    /// when the interrupts cannot be set up after the drain.
    private func resume(command: ConfigSpaceAccess.Command, memory: NVMeQueueMemory) throws -> String? {
        let header: NVMeKeptHeader
        let identify: [UInt8]
        switch try Self.resumable(memory, registers: registers, command: command, completion: completion,
                                  vectorsOffered: device.vectorCount(completion == .msix ? .msix : .msi)) {
        case .failure(let refusal): return refusal.description
        case .success(let saved): (header, identify) = saved
        }
        step("checks")
        var drained = 0
        let deadline = monotonicNanoseconds() + Self.drainPatience.wholeNanoseconds
        do {
            for queue in [admin] + ioQueues.prefix(header.ioQueuesCreated) { drained += try queue.resume(deadline: deadline) }
        } catch {
            return "\(error)"
        }
        step("drain")
        activeQueues.store(header.ioQueuesCreated, ordering: .releasing)
        commandRegister = command
        maximumTransfer = header.maximumTransfer
        identifyControllerData = NVMeIdentifyData(identify)
        namespaces = header.namespaces
        if let first = namespaces.first { defaultNamespace = first }
        vectorCount = try setUpInterrupts()
        step("interrupts")
        identity = makeIdentity(NVMeIdentifyController(data: identifyControllerData))
        resumption = "resumed without a reset, \(drained) completion(s) of the predecessor's commands drained"
        return nil
    }

    /// What Identify Controller said, with the active namespaces found: for the start and a resumption alike.
    private func makeIdentity(_ controller: NVMeIdentifyController) -> Identity {
        let mdts = controller.maximumDataTransferSize
        return Identity(vendorID: controller.vendorID, serialNumber: controller.serialNumber,
                        modelNumber: controller.modelNumber, firmwareRevision: controller.firmwareRevision,
                        namespaceLimit: controller.namespaceLimit, namespaces: namespaces,
                        maximumTransfer: mdts > 0 ? Self.pageSize << Int(mdts) : nil,
                        blockSize: defaultNamespace.blockSize, blockCount: defaultNamespace.blockCount)
    }

    /// Writes what the start found into the kept memory's header, so that a successor may
    /// resume the controller (not when more namespaces are active than the header holds).
    private func saveHeader() throws {
        guard namespaces.count <= NVMeKeptLayout.maximumNamespaces else { return }
        for queue in [admin] + ioQueues.prefix(ioQueueCount) { try queue.saveRecord() }
        let header = NVMeKeptHeader(layout: queueMemory.layout, capabilities: capabilities.rawValue, completion: completion,
                                    ioQueueLimit: queueMemory.ioQueueLimit, ioQueuesCreated: ioQueueCount, vectorCount: vectorCount,
                                    maximumTransfer: maximumTransfer, namespaces: namespaces)
        try header.save(in: queueMemory.kept, identify: identifyControllerData.bytes)
    }

    /// Enables the interrupts the completion method asks for, makes each I/O queue's DPC and
    /// attaches the ISRs; returns how many vectors there are (1 when polling). With MSI-X, one
    /// vector per I/O queue where the controller offers enough: the admin queue and I/O queue 1
    /// on vector 0, queue N on vector N − 1; with fewer, the queues share them in turn.
    private func setUpInterrupts() throws -> Int {
        guard completion != .poll else { return 1 }
        // The DPCs and ISRs reach the controller unretained, so that an interrupt takes no
        // reference: deinit detaches the ISRs and retires the DPCs if stop() did not.
        let controller = Unmanaged.passUnretained(self)
        handOvers = ioQueues.indices.map { index in
            runtime.makeDPC("nvme completions \(index + 1)") { controller._withUnsafeGuaranteedRef { $0.handOverCompletions(index) } }
        }
        handOverReferences = handOvers.map { Unmanaged.passUnretained($0) }
        let kind: InterruptKind = completion == .msix ? .msix : completion == .msi ? .msi : .intx
        let offered = device.vectorCount(kind)
        guard offered > 0 else {
            throw Failure.badRequest("the device offers no \(kind) vector: use another completion method (--irq)")
        }
        let vectors = try device.enableInterrupts(kind, count: kind == .msix ? min(ioQueues.count, offered) : 1)
        for vector in vectors {
            let index = vector.index
            let stride = vectors.count
            attachments.append(try runtime.attachInterrupt(vector, name: "nvme\(index)", acknowledge: { 0 }) { _ in
                controller._withUnsafeGuaranteedRef { $0.interrupt(admin: index == 0, firstQueue: index, stride: stride) }
            })
        }
        return vectors.count
    }

    /// How many Identify Namespace commands go in one round of the start (each into its own
    /// page of the bounce buffer).
    static let namespacesPerRound = 16

    /// Runs `rounds` of admin commands in turn, each round's commands together, with the
    /// Identify Namespace of `identifiers` spread over them (and further rounds while any are
    /// left); returns the active namespaces among `identifiers` (those with a size and a
    /// usable format), in their order.
    private func startRounds(_ rounds: [[(NVMeCommand, String)]], identifying identifiers: [UInt32]) throws -> [Namespace] {
        var namespaces: [Namespace] = []
        var pending = identifiers[...]
        var round = 0
        while round < rounds.count || !pending.isEmpty {
            let batch = Array(pending.prefix(Self.namespacesPerRound))
            pending = pending.dropFirst(batch.count)
            let queueCommands = round < rounds.count ? rounds[round] : []
            round += 1
            try bounce.withLock { buffers throws in
                let identifies: [(NVMeCommand, String)] = batch.enumerated().map { slot, identifier in
                    (.identify(.namespace, namespace: identifier, into: buffers.data.deviceAddress + UInt64(slot * Self.pageSize)),
                     "Identify (CNS \(NVMeIdentifyStructure.namespace.rawValue), namespace \(identifier))")
                }
                _ = try executeTogether(queueCommands + identifies, on: admin)
                for (slot, identifier) in batch.enumerated() {
                    let data = NVMeIdentifyNamespace(data: NVMeIdentifyData(try buffers.data.read(NVMeIdentifyData.size, at: slot * Self.pageSize)))
                    guard data.size > 0, let format = data.format, format.blockSize > 0 else { continue }  // Inactive.
                    namespaces.append(Namespace(identifier: identifier, blockSize: format.blockSize, blockCount: data.size,
                                                metadataSize: format.metadataSize))
                }
            }
        }
        return namespaces
    }

    // MARK: Stop

    /// Each I/O queue's size: at most this many less one commands can be in flight on one queue.
    public var queueEntries: Int { ioQueues[0].entries }

    /// How many I/O queue pairs the controller granted and this driver created: one per CPU
    /// with MSI-X (up to ``maximumIOQueues``), else one.
    public var ioQueueCount: Int { activeQueues.load(ordering: .relaxed) }

    /// The index of the I/O queue the calling thread submits to: `index` (wrapped) when given,
    /// else its CPU's.
    @inline(__always)
    func submissionQueueIndex(_ index: Int? = nil) -> Int {
        let count = ioQueueCount
        if count == 1 { return 0 }
        return (index ?? SystemThread.currentCPU) % count
    }

    /// The I/O queue the calling thread submits to: its CPU's.
    func submissionQueue() -> NVMeQueuePair {
        ioQueues[submissionQueueIndex()]
    }

    /// Runs `body` with I/O queue `index`, taking no reference to it (the I/O path's way).
    @inline(__always) @discardableResult
    func withIOQueue<Result>(_ index: Int, _ body: (NVMeQueuePair) throws -> Result) rethrows -> Result {
        try ioQueueReferences[index]._withUnsafeGuaranteedRef(body)
    }

    /// How many times the ISRs ran.
    public var isrCalls: Int { attachments.reduce(0) { $0 + $1.isrCalls } }

    /// Detaches the ISRs and retires the DPCs if ``stop()`` did not (they reach the controller
    /// through an unretained reference): an ISR or DPC in progress is waited for and none
    /// starts afterwards.
    deinit {
        for attachment in attachments { runtime.detachInterrupt(attachment) }
        for dpc in handOvers { dpc.retire() }
    }

    /// What a killed process leaves: the ISRs detached and the DPCs retired, and nothing else
    /// (the controller enabled, its queues, commands in flight and saved state as they are),
    /// for tests of resumption in one process. The controller is of no use afterwards.
    func abandonAsIfKilled() {
        removalWatch?.cancel()
        for attachment in attachments { runtime.detachInterrupt(attachment) }
        attachments.removeAll()
        for dpc in handOvers { dpc.retire() }
    }

    /// The kept memory the queues and saved state are in, for a successor in the same process (tests).
    var keptMemory: DMABuffer { queueMemory.kept }

    /// Fails what is in flight with ``Failure/stopped``, detaches the ISRs, disables the
    /// controller and frees the queues. Later calls fail with ``Failure/stopped``.
    public func stop() {
        removalWatch?.cancel()
        lose(.stopped)
        for attachment in attachments { runtime.detachInterrupt(attachment) }
        attachments.removeAll()
        do {
            try device.disableInterrupts()
        } catch {
            // The device was closed first: its interrupts went with it.
        }
        var configuration = NVMeConfiguration(rawValue: registers.load(NVMeRegister.configuration))
        if !NVMeStatusRegister(rawValue: registers.load(NVMeRegister.status)).isAllOnes, configuration.contains(.enable) {
            configuration.remove(.enable)
            registers.store(configuration.rawValue, to: NVMeRegister.configuration)
            do {
                try Self.waitForReady(false, registers, capabilities)
            } catch {
                // Stopping anyway: the next start resets the controller again, and reports it.
            }
        }
        queueMemory.release()
    }
}
