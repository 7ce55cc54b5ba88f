import ModelessDevice

/// Command opcodes (NVMe Base 1.4, figures 139 and 346). Admin and NVM opcodes overlap
/// (Flush and Create I/O Submission Queue); the queue a command goes to says which set it is.
struct NVMeOpcode: Sendable, Equatable {
    let rawValue: UInt8

    // Admin command set.
    static let createIOSubmissionQueue = NVMeOpcode(rawValue: 0x01)
    static let createIOCompletionQueue = NVMeOpcode(rawValue: 0x05)
    static let identify = NVMeOpcode(rawValue: 0x06)
    static let setFeatures = NVMeOpcode(rawValue: 0x09)
    // NVM command set.
    static let flush = NVMeOpcode(rawValue: 0x00)
    static let write = NVMeOpcode(rawValue: 0x01)
    static let read = NVMeOpcode(rawValue: 0x02)
}

/// What Identify returns (CNS, Controller or Namespace Structure).
enum NVMeIdentifyStructure: UInt32 {
    /// Identify Namespace data structure for the namespace in NSID.
    case namespace = 0x00
    /// Identify Controller data structure.
    case controller = 0x01
    /// Active Namespace ID list: active namespace IDs above NSID, in increasing order.
    case activeNamespaces = 0x02
}

/// A 64-byte submission queue entry (NVMe Base 1.4, figure 105), field by field: a value
/// held inline, so building and submitting a command allocates nothing.
struct NVMeCommand {
    /// CDW0 OPC.
    var opcode: NVMeOpcode
    /// CDW0 CID, the command identifier; the queue sets it at submission.
    var identifier: UInt16 = 0
    /// NSID.
    var namespace: UInt32 = 0
    /// PRP Entry 1 and 2 (DPTR).
    var prp1: UInt64 = 0
    var prp2: UInt64 = 0
    /// Command Dwords 10 to 15, command specific.
    var dword10: UInt32 = 0
    var dword11: UInt32 = 0
    var dword12: UInt32 = 0
    var dword13: UInt32 = 0
    var dword14: UInt32 = 0
    var dword15: UInt32 = 0

    init(_ opcode: NVMeOpcode, namespace: UInt32 = 0) {
        self.opcode = opcode
        self.namespace = namespace
    }

    /// Writes the entry at `offset` of `ring`: dword 0 (OPC 7:0, CID 31:16), NSID at 4,
    /// MPTR at 16 (unused), PRP1 at 24, PRP2 at 32, CDW10–15 from 40.
    func store(in ring: DMABuffer, at offset: Int) throws(DeviceError) {
        try ring.store32(UInt32(opcode.rawValue) | UInt32(identifier) << 16, at: offset)
        try ring.store32(namespace, at: offset + 4)
        try ring.store64(0, at: offset + 8)
        try ring.store64(0, at: offset + 16)
        try ring.store64(prp1, at: offset + 24)
        try ring.store64(prp2, at: offset + 32)
        try ring.store32(dword10, at: offset + 40)
        try ring.store32(dword11, at: offset + 44)
        try ring.store32(dword12, at: offset + 48)
        try ring.store32(dword13, at: offset + 52)
        try ring.store32(dword14, at: offset + 56)
        try ring.store32(dword15, at: offset + 60)
    }

    static let entrySize = 64
    /// log2 of ``entrySize``, for CC.IOSQES.
    static let entrySizeShift: UInt32 = 6
}

// MARK: The commands this driver sends

extension NVMeCommand {
    /// Identify (CNS in CDW10 7:0) into the 4 KiB page at `page`.
    static func identify(_ structure: NVMeIdentifyStructure, namespace: UInt32 = 0, into page: UInt64) -> NVMeCommand {
        var command = NVMeCommand(.identify, namespace: namespace)
        command.prp1 = page
        command.dword10 = structure.rawValue
        return command
    }

    /// Set Features, Number of Queues (FID 07h): NSQR in CDW11 15:0, NCQR in 31:16, both 0-based.
    static func setNumberOfQueues(submission: Int, completion: Int) -> NVMeCommand {
        var command = NVMeCommand(.setFeatures)
        command.dword10 = 0x07
        command.dword11 = UInt32(submission - 1) | UInt32(completion - 1) << 16
        return command
    }

    /// Create I/O Completion Queue: QSIZE (0-based) and QID in CDW10; IV (interrupt vector)
    /// 31:16, IEN (interrupts enabled) bit 1 and PC (physically contiguous) bit 0 in CDW11.
    static func createIOCompletionQueue(_ queue: NVMeQueuePair, vector: Int, interrupts: Bool) -> NVMeCommand {
        var command = NVMeCommand(.createIOCompletionQueue)
        command.prp1 = queue.completions.deviceAddress
        command.dword10 = UInt32(queue.entries - 1) << 16 | UInt32(queue.identifier)
        command.dword11 = UInt32(vector) << 16 | (interrupts ? 1 << 1 : 0) | 1
        return command
    }

    /// Create I/O Submission Queue: QSIZE and QID in CDW10; CQID 31:16 and PC bit 0 in CDW11.
    static func createIOSubmissionQueue(_ queue: NVMeQueuePair) -> NVMeCommand {
        var command = NVMeCommand(.createIOSubmissionQueue)
        command.prp1 = queue.submissions.deviceAddress
        command.dword10 = UInt32(queue.entries - 1) << 16 | UInt32(queue.identifier)
        command.dword11 = UInt32(queue.identifier) << 16 | 1
        return command
    }

    /// Read or Write: SLBA in CDW10–11, NLB (0-based) in CDW12 15:0.
    static func transfer(_ opcode: NVMeOpcode, namespace: UInt32, lba: UInt64, blocks: Int,
                         prp1: UInt64, prp2: UInt64) -> NVMeCommand {
        var command = NVMeCommand(opcode, namespace: namespace)
        command.prp1 = prp1
        command.prp2 = prp2
        command.dword10 = UInt32(truncatingIfNeeded: lba)
        command.dword11 = UInt32(truncatingIfNeeded: lba >> 32)
        command.dword12 = UInt32(blocks - 1)
        return command
    }
}

/// Status Field of a completion (NVMe Base 1.4, figure 126): SC, SCT, More, DNR.
struct NVMeStatus: Sendable, Equatable {
    /// The field without the phase tag: bits 15:1 of CQE dword 3's upper half.
    let rawValue: UInt16

    static let code = BitField<UInt16>(1, width: 8)
    static let type = BitField<UInt16>(9, width: 3)

    /// SCT, Status Code Type: 0 generic, 1 command specific, 2 media and data integrity.
    var type: UInt8 { UInt8(Self.type.value(in: rawValue)) }
    /// SC, Status Code.
    var code: UInt8 { UInt8(Self.code.value(in: rawValue)) }
    /// Successful Completion: SCT and SC both zero.
    var succeeded: Bool { type == 0 && code == 0 }
}

/// A 16-byte completion queue entry (NVMe Base 1.4, figure 121).
struct NVMeCompletion: Sendable, Equatable {
    /// DW0, command specific.
    var result: UInt32
    /// DW2: SQHD 15:0, SQID 31:16.
    var submissionQueueHead: UInt16
    var submissionQueue: UInt16
    /// DW3: CID 15:0, then P (phase tag) bit 16 and the Status Field 31:17.
    var identifier: UInt16
    var phase: Bool
    var status: NVMeStatus

    static let entrySize = 16
    /// log2 of ``entrySize``, for CC.IOCQES.
    static let entrySizeShift: UInt32 = 4

    static let phaseBit = BitField<UInt32>(16, width: 1)

    /// The phase tag of the entry at `offset` of `ring`, read first: the rest is valid only
    /// once it flips to the queue's current phase.
    static func phase(in ring: DMABuffer, at offset: Int) throws(DeviceError) -> Bool {
        phaseBit.value(in: try ring.load32(at: offset + 12)) == 1
    }

}

extension NVMeCompletion {
    /// The entry at `offset` of `ring`.
    init(in ring: DMABuffer, at offset: Int) throws(DeviceError) {
        result = try ring.load32(at: offset)
        let dword2 = try ring.load32(at: offset + 8)
        let dword3 = try ring.load32(at: offset + 12)
        submissionQueueHead = UInt16(truncatingIfNeeded: dword2)
        submissionQueue = UInt16(truncatingIfNeeded: dword2 >> 16)
        identifier = UInt16(truncatingIfNeeded: dword3)
        phase = Self.phaseBit.value(in: dword3) == 1
        status = NVMeStatus(rawValue: UInt16(truncatingIfNeeded: dword3 >> 16))
    }
}
