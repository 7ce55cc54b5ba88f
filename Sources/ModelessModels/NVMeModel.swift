import ModelessDevice
import ModelessSystem

/// An NVMe controller with memory-backed namespaces (one by default; several, with 512- or
/// 4096-byte blocks, for tests): enough of the NVM Express Base Specification for drivers'
/// unit tests. Controller enable and disable (which drops every queue and deasserts INTx),
/// the admin queue, Identify (controller, namespace, active namespace list), Set Features
/// (Number of Queues), Create I/O Completion and
/// Submission Queue, and Read, Write and Flush with PRP1, PRP2 and PRP lists. Completions are
/// posted with the phase bit and signalled on the completion queue's MSI-X vector, or on INTx
/// (a level held while any completion queue has entries the host has not consumed).
///
/// Faults: commands can be made to fail with a status, to be dropped (never completed), or the
/// controller can be put in fatal status (CSTS.CFS).
public final class NVMeModel: DeviceModel, @unchecked Sendable {
    /// BAR 0: 16 KiB of registers and doorbells.
    public let barSizes = [0: 0x4000]
    /// INTx and ``msixVectors`` MSI-X vectors.
    public var vectorCounts: [InterruptKind: Int] { [.msix: msixVectors, .intx: 1] }
    /// How many MSI-X vectors the controller offers.
    public let msixVectors: Int
    /// QEMU's NVMe ids (1b36:0010), class 010802 (NVM Express), interrupt pin A and an MSI-X capability.
    public var initialConfigSpace: [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 256)
        bytes[0] = 0x36; bytes[1] = 0x1b; bytes[2] = 0x10; bytes[3] = 0x00   // 1b36:0010
        bytes[6] = 0x10; bytes[8] = 0x02
        bytes[0x09] = 0x02; bytes[0x0A] = 0x08; bytes[0x0B] = 0x01           // class 010802
        bytes[0x34] = 0x40; bytes[0x3D] = 1
        bytes[0x40] = 0x11; bytes[0x42] = UInt8(msixVectors - 1)             // MSI-X table size
        return bytes
    }

    /// A namespace: its ID, and its size in blocks of `blockSize` (512 or 4096) bytes.
    public struct Namespace: Sendable {
        /// The namespace ID (NSID), from 1.
        public var identifier: UInt32
        /// Its size in blocks.
        public var blocks: Int
        /// Bytes per block: 512 or 4096.
        public var blockSize: Int

        /// A namespace `identifier` of `blocks` blocks of `blockSize` (512 or 4096) bytes.
        public init(identifier: UInt32, blocks: Int, blockSize: Int = 512) {
            precondition(identifier > 0 && (blockSize == 512 || blockSize == 4096), "NSID from 1, 512- or 4096-byte blocks")
            self.identifier = identifier
            self.blocks = blocks
            self.blockSize = blockSize
        }
    }

    /// The active namespaces, by increasing ID.
    public let namespaces: [Namespace]
    /// The first namespace's block size.
    public var blockSize: Int { namespaces[0].blockSize }
    /// The first namespace's block count.
    public var blockCount: Int { namespaces[0].blocks }
    /// The controller's serial number, as Identify reports it.
    public let serialNumber: String
    /// Maximum Data Transfer Size, as a power of two of 4 KiB pages.
    public let mdts: UInt8 = 5

    /// A status to complete the next I/O command with instead of running it (type, code).
    public var failNextIO: (type: UInt8, code: UInt8)? {
        get { lock.withLock { pendingFailure } }
        set { lock.withLock { pendingFailure = newValue } }
    }
    /// Commands are taken from the queues but never completed.
    public var dropCommands: Bool {
        get { lock.withLock { dropping } }
        set { lock.withLock { dropping = newValue } }
    }
    /// Sets CSTS.CFS and stops processing commands.
    public func enterFatalStatus() { lock.withLock { fatal = true } }

    /// How many commands of each opcode the I/O queues ran.
    public var ioCommands: [UInt8: Int] { lock.withLock { ioCounts } }
    /// How many commands each I/O submission queue ran, by queue ID.
    public var commandsPerQueue: [Int: Int] { lock.withLock { queueCounts } }
    /// How many times each submission queue's tail doorbell was written, by queue ID (0: admin).
    public var submissionDoorbellWrites: [Int: Int] { lock.withLock { doorbellCounts } }

    private struct Queue {
        var base: UInt64
        var entries: Int
        var head = 0
        var tail = 0
        var completionQueue = 0
        var phase: UInt32 = 1
        var vector = 0
        var interruptsEnabled = true
    }

    private let lock = ConditionLock()
    private var context: ModelContext?
    private let storage: [UInt32: ModelNamespaceStorage]
    private var configuration: UInt32 = 0
    private var ready = false
    private var fatal = false
    private var adminAttributes: UInt32 = 0
    private var adminSubmissionBase: UInt64 = 0
    private var adminCompletionBase: UInt64 = 0
    private var submissionQueues: [Int: Queue] = [:]
    private var completionQueues: [Int: Queue] = [:]
    private var pendingFailure: (type: UInt8, code: UInt8)?
    private var dropping = false
    private var ioCounts: [UInt8: Int] = [:]
    private var queueCounts: [Int: Int] = [:]
    private var doorbellCounts: [Int: Int] = [:]
    private var interruptMask: UInt32 = 0

    /// A controller whose namespace of `blocks` 512-byte blocks is in memory or, with
    /// `backingFile`, in a file that keeps its contents across processes (the file is created
    /// if missing; an existing one must be exactly that size).
    public init(blocks: Int = 8192, serialNumber: String = "model-nvme0", backingFile: String? = nil) throws(SystemError) {
        namespaces = [Namespace(identifier: 1, blocks: blocks)]
        msixVectors = 4
        self.serialNumber = serialNumber
        storage = [1: try ModelNamespaceStorage(bytes: blocks * 512, backingFile: backingFile)]
    }

    /// A controller with an in-memory namespace of `blocks` 512-byte blocks.
    public convenience init(blocks: Int = 8192, serialNumber: String = "model-nvme0") {
        try! self.init(blocks: blocks, serialNumber: serialNumber, backingFile: nil)
    }

    /// A controller with in-memory `namespaces` (distinct IDs; NN is the highest) offering
    /// `msixVectors` MSI-X vectors (1 to 4).
    public init(namespaces: [Namespace], msixVectors: Int = 4, serialNumber: String = "model-nvme0") {
        precondition(!namespaces.isEmpty && (1...4).contains(msixVectors), "a namespace or more, 1 to 4 MSI-X vectors")
        self.namespaces = namespaces.sorted { $0.identifier < $1.identifier }
        self.msixVectors = msixVectors
        self.serialNumber = serialNumber
        var storage: [UInt32: ModelNamespaceStorage] = [:]
        for namespace in namespaces {
            storage[namespace.identifier] = try! ModelNamespaceStorage(bytes: namespace.blocks * namespace.blockSize, backingFile: nil)
        }
        self.storage = storage
    }

    /// Keeps `context` to raise interrupts and reach queues and data buffers.
    public func connect(_ context: ModelContext) { lock.withLock { self.context = context } }

    /// A namespace's bytes (the first namespace's by default), for checking what a driver wrote.
    public func contents(block: Int, count: Int, namespace: UInt32? = nil) -> [UInt8] {
        let namespace = namespace.flatMap { id in namespaces.first { $0.identifier == id } } ?? namespaces[0]
        return lock.withLock {
            storage[namespace.identifier]!.read(at: block * namespace.blockSize, count: count * namespace.blockSize)
        }
    }

    // MARK: Registers

    /// Reads a controller register (CAP, VS, CC, CSTS, AQA, ASQ, ACQ, ...).
    public func read(bar: Int, offset: Int, width: Int) -> UInt64 {
        lock.withLock {
            switch offset {
            case 0x00:  // CAP: MQES 255, CQR, TO 2 (1 s), DSTRD 0, CSS NVM, MPSMIN/MAX 0
                let value: UInt64 = 255 | 1 << 16 | 2 << 24 | 1 << 37
                return width == 4 ? value & 0xFFFF_FFFF : value
            case 0x04: return 1 << 5  // upper half of CAP: CSS bit 37
            case 0x08: return 0x0001_0400  // version 1.4
            case 0x0C, 0x10: return UInt64(interruptMask)
            case 0x14: return UInt64(configuration)
            case 0x1C: return (ready ? 1 : 0) | (fatal ? 2 : 0)
            case 0x24: return UInt64(adminAttributes)
            case 0x28: return width == 8 ? adminSubmissionBase : adminSubmissionBase & 0xFFFF_FFFF
            case 0x30: return width == 8 ? adminCompletionBase : adminCompletionBase & 0xFFFF_FFFF
            default: return 0
            }
        }
    }

    /// Writes a controller register or a doorbell; a submission doorbell runs the queued commands.
    public func write(bar: Int, offset: Int, width: Int, value: UInt64) {
        let value32 = UInt32(truncatingIfNeeded: value)
        lock.lock()
        switch offset {
        case 0x0C: interruptMask |= value32
        case 0x10: interruptMask &= ~value32
        case 0x14:
            let enabling = value32 & 1 != 0 && configuration & 1 == 0
            let disabling = value32 & 1 == 0 && configuration & 1 != 0
            configuration = value32
            if enabling && !fatal {
                let entries = Int(adminAttributes & 0xFFF) + 1
                submissionQueues = [0: Queue(base: adminSubmissionBase, entries: entries)]
                completionQueues = [0: Queue(base: adminCompletionBase, entries: Int(adminAttributes >> 16 & 0xFFF) + 1)]
                ready = true
            }
            if disabling {
                submissionQueues = [:]
                completionQueues = [:]
                ready = false
                lock.unlock()
                context?.lowerInterrupt()  // A reset controller asserts nothing.
                return
            }
        case 0x24: adminAttributes = value32
        case 0x28: adminSubmissionBase = width == 8 ? value : (adminSubmissionBase & ~0xFFFF_FFFF) | value
        case 0x2C: adminSubmissionBase = (adminSubmissionBase & 0xFFFF_FFFF) | value << 32
        case 0x30: adminCompletionBase = width == 8 ? value : (adminCompletionBase & ~0xFFFF_FFFF) | value
        case 0x34: adminCompletionBase = (adminCompletionBase & 0xFFFF_FFFF) | value << 32
        case 0x1000...:
            let doorbell = (offset - 0x1000) / 4
            let queue = doorbell / 2
            if doorbell % 2 == 0 {
                submissionQueues[queue]?.tail = Int(value32)
                doorbellCounts[queue, default: 0] += 1
                lock.unlock()
                context?.schedule { [weak self] in self?.process(queue) }
                return
            }
            completionQueues[queue]?.head = Int(value32)
            let outstanding = completionQueues.values.contains { $0.head != $0.tail }
            lock.unlock()
            if !outstanding { context?.lowerInterrupt() }
            return
        default: break
        }
        lock.unlock()
    }

    // MARK: Commands

    private func process(_ queue: Int) {
        while true {
            let next: (command: [UInt32], completionQueue: Int)? = lock.withLock {
                guard ready, !fatal, var submission = submissionQueues[queue], submission.head != submission.tail else { return nil }
                let address = submission.base + UInt64(submission.head * 64)
                submission.head = (submission.head + 1) % submission.entries
                submissionQueues[queue] = submission
                guard let bytes = context?.dmaRead(address, count: 64) else { return nil }
                let dwords = (0..<16).map { index in (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[index * 4 + $1]) << (8 * $1) } }
                return (dwords, submission.completionQueue)
            }
            guard let next else { return }
            if dropCommands { continue }
            if queue != 0 { lock.withLock { queueCounts[queue, default: 0] += 1 } }
            let (result, status) = queue == 0 ? admin(next.command) : io(next.command)
            post(queue: next.completionQueue, submissionQueue: queue, identifier: UInt16(next.command[0] >> 16),
                 result: result, status: status)
        }
    }

    private static let success: (UInt8, UInt8) = (0, 0)
    private static let invalidField: (UInt8, UInt8) = (0, 0x02)
    private static let invalidOpcode: (UInt8, UInt8) = (0, 0x01)
    private static let dataTransferError: (UInt8, UInt8) = (0, 0x04)
    private static let lbaOutOfRange: (UInt8, UInt8) = (0, 0x80)
    private static let invalidNamespace: (UInt8, UInt8) = (0, 0x0B)

    private func admin(_ command: [UInt32]) -> (UInt32, (UInt8, UInt8)) {
        let opcode = UInt8(command[0] & 0xFF)
        let prp1 = UInt64(command[6]) | UInt64(command[7]) << 32
        switch opcode {
        case 0x06:  // Identify
            var data = [UInt8](repeating: 0, count: 4096)
            switch command[10] & 0xFF {
            case 1:
                data[0] = 0x36; data[1] = 0x1b
                put(serialNumber, width: 20, at: 4, in: &data)
                put("Modeless NVMe Model", width: 40, at: 24, in: &data)
                put("1.0", width: 8, at: 64, in: &data)
                data[77] = mdts
                data[512] = 0x66; data[513] = 0x44  // SQES, CQES
                putLittle(UInt64(namespaces.last!.identifier), width: 4, at: 516, in: &data)  // NN
            case 0:
                guard let namespace = namespaces.first(where: { $0.identifier == command[1] }) else {
                    break  // An inactive namespace: all zeroes.
                }
                for offset in [0, 8, 16] { putLittle(UInt64(namespace.blocks), width: 8, at: offset, in: &data) }  // NSZE, NCAP, NUSE
                data[25] = 1                                     // NLBAF: two formats
                data[26] = namespace.blockSize == 4096 ? 1 : 0   // FLBAS
                data[130] = 9                                    // LBAF0: 2^9 = 512-byte blocks
                data[134] = 12                                   // LBAF1: 2^12 = 4096-byte blocks
            case 2:  // Active namespace IDs above NSID
                var offset = 0
                for namespace in namespaces where namespace.identifier > command[1] {
                    putLittle(UInt64(namespace.identifier), width: 4, at: offset, in: &data)
                    offset += 4
                }
            default:
                return (0, Self.invalidField)
            }
            return (0, context?.dmaWrite(data, to: prp1) == true ? Self.success : Self.dataTransferError)
        case 0x09 where command[10] & 0xFF == 0x07:  // Number of Queues: grant what was asked, up to 4
            return (min(command[11] & 0xFFFF, 3) | min(command[11] >> 16, 3) << 16, Self.success)
        case 0x05:  // Create I/O Completion Queue
            let identifier = Int(command[10] & 0xFFFF)
            guard identifier > 0 else { return (0, Self.invalidField) }
            lock.withLock {
                completionQueues[identifier] = Queue(base: prp1, entries: Int(command[10] >> 16) + 1,
                                                     vector: Int(command[11] >> 16), interruptsEnabled: command[11] & 0b10 != 0)
            }
            return (0, Self.success)
        case 0x01:  // Create I/O Submission Queue
            let identifier = Int(command[10] & 0xFFFF)
            let completion = Int(command[11] >> 16)
            let exists = lock.withLock { completionQueues[completion] != nil }
            guard identifier > 0, exists else { return (0, (1, 0x00)) }  // Completion Queue Invalid
            lock.withLock {
                var queue = Queue(base: prp1, entries: Int(command[10] >> 16) + 1)
                queue.completionQueue = completion
                submissionQueues[identifier] = queue
            }
            return (0, Self.success)
        default:
            return (0, Self.invalidOpcode)
        }
    }

    private func io(_ command: [UInt32]) -> (UInt32, (UInt8, UInt8)) {
        let opcode = UInt8(command[0] & 0xFF)
        if let failure = lock.withLock({ () -> (UInt8, UInt8)? in
            ioCounts[opcode, default: 0] += 1
            defer { pendingFailure = nil }
            return pendingFailure
        }) {
            return (0, failure)
        }
        guard let namespace = namespaces.first(where: { $0.identifier == command[1] }),
              let storage = storage[namespace.identifier] else { return (0, Self.invalidNamespace) }
        guard opcode == 0x01 || opcode == 0x02 else { return (0, opcode == 0x00 ? Self.success : Self.invalidOpcode) }
        let blockSize = namespace.blockSize
        let lba = Int(UInt64(command[10]) | UInt64(command[11]) << 32)
        let blocks = Int(command[12] & 0xFFFF) + 1
        guard lba + blocks <= namespace.blocks else { return (0, Self.lbaOutOfRange) }
        guard let pages = dataPages(command, bytes: blocks * blockSize) else { return (0, Self.dataTransferError) }
        var offset = 0
        for (address, length) in pages {
            let start = lba * blockSize + offset
            if opcode == 0x01 {
                guard let bytes = context?.dmaRead(address, count: length) else { return (0, Self.dataTransferError) }
                lock.withLock { storage.write(bytes, at: start) }
            } else {
                let bytes = lock.withLock { storage.read(at: start, count: length) }
                guard context?.dmaWrite(bytes, to: address) == true else { return (0, Self.dataTransferError) }
            }
            offset += length
        }
        return (0, Self.success)
    }

    /// The (address, length) pieces a command's PRPs describe for `bytes` bytes.
    private func dataPages(_ command: [UInt32], bytes: Int) -> [(UInt64, Int)]? {
        let prp1 = UInt64(command[6]) | UInt64(command[7]) << 32
        let prp2 = UInt64(command[8]) | UInt64(command[9]) << 32
        let firstLength = min(bytes, 4096 - Int(prp1 % 4096))
        var pieces = [(prp1, firstLength)]
        var remaining = bytes - firstLength
        if remaining == 0 { return pieces }
        if remaining <= 4096 { return pieces + [(prp2, remaining)] }
        let count = (remaining + 4095) / 4096
        guard let list = context?.dmaRead(prp2, count: count * 8) else { return nil }
        for index in 0..<count {
            let address = (0..<8).reduce(UInt64(0)) { $0 | UInt64(list[index * 8 + $1]) << (8 * $1) }
            pieces.append((address, min(4096, remaining)))
            remaining -= 4096
        }
        return pieces
    }

    private func post(queue: Int, submissionQueue: Int, identifier: UInt16, result: UInt32, status: (UInt8, UInt8)) {
        let posted: (address: UInt64, entry: [UInt8], vector: Int, interrupt: Bool)? = lock.withLock {
            guard var completion = completionQueues[queue], let submission = submissionQueues[submissionQueue] else { return nil }
            let statusField = UInt32(status.1) << 17 | UInt32(status.0) << 25
            let dwords: [UInt32] = [result, 0, UInt32(submission.head) | UInt32(submissionQueue) << 16,
                                    UInt32(identifier) | completion.phase << 16 | statusField]
            let address = completion.base + UInt64(completion.tail * 16)
            completion.tail = (completion.tail + 1) % completion.entries
            if completion.tail == 0 { completion.phase ^= 1 }
            completionQueues[queue] = completion
            let bytes = dwords.flatMap { dword in (0..<4).map { UInt8(truncatingIfNeeded: dword >> (8 * $0)) } }
            return (address, bytes, completion.vector, completion.interruptsEnabled)
        }
        guard let posted else { return }
        context?.dmaWrite(posted.entry, to: posted.address)
        if posted.interrupt { context?.raiseInterrupt(vector: posted.vector) }
    }

    private func putLittle(_ value: UInt64, width: Int, at offset: Int, in data: inout [UInt8]) {
        for index in 0..<width { data[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
    }

    private func put(_ text: String, width: Int, at offset: Int, in data: inout [UInt8]) {
        let bytes = Array(text.utf8.prefix(width)) + [UInt8](repeating: 0x20, count: max(0, width - text.utf8.count))
        data.replaceSubrange(offset..<offset + width, with: bytes)
    }
}
