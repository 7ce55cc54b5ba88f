/// NVMe controller registers and command formats (NVM Express Base Specification 1.4,
/// sections 3.1 and 4), as the driver uses them.
enum NVMeRegister {
    /// Controller Capabilities (64-bit): MQES 15:0, TO 31:24 (500 ms units), DSTRD 35:32.
    static let capabilities = 0x00
    static let version = 0x08
    /// Interrupt Mask Set / Clear (used with INTx and MSI, not MSI-X).
    static let interruptMaskSet = 0x0C
    static let interruptMaskClear = 0x10
    /// Controller Configuration: EN 0, CSS 6:4, MPS 10:7, SHN 15:14, IOSQES 19:16, IOCQES 23:20.
    static let configuration = 0x14
    /// Controller Status: RDY 0, CFS 1 (fatal status), SHST 3:2.
    static let status = 0x1C
    /// Admin Queue Attributes: ASQS 11:0, ACQS 27:16 (sizes minus one).
    static let adminQueueAttributes = 0x24
    static let adminSubmissionQueue = 0x28
    static let adminCompletionQueue = 0x30
    /// Doorbells start here; queue y's submission tail is at 0x1000 + 2y × stride, its
    /// completion head at 0x1000 + (2y + 1) × stride, stride = 4 << DSTRD.
    static let doorbells = 0x1000
}

enum NVMeOpcode {
    // Admin commands.
    static let createIOSubmissionQueue: UInt8 = 0x01
    static let createIOCompletionQueue: UInt8 = 0x05
    static let identify: UInt8 = 0x06
    static let setFeatures: UInt8 = 0x09
    // NVM command set.
    static let flush: UInt8 = 0x00
    static let write: UInt8 = 0x01
    static let read: UInt8 = 0x02
}

/// A 64-byte submission queue entry, as sixteen dwords held inline: a fixed-size value, so
/// building and submitting a command allocates nothing.
struct NVMeCommand {
    var dwords = InlineArray<16, UInt32>(repeating: 0)

    init(opcode: UInt8, namespace: UInt32 = 0) {
        dwords[0] = UInt32(opcode)
        dwords[1] = namespace
    }

    /// The command identifier, in bits 31:16 of dword 0.
    var identifier: UInt16 {
        get { UInt16(dwords[0] >> 16) }
        set { dwords[0] = (dwords[0] & 0xFFFF) | UInt32(newValue) << 16 }
    }

    /// Data pointer: PRP entry 1 (dwords 6–7) and 2 (dwords 8–9).
    mutating func setPRPs(_ first: UInt64, _ second: UInt64) {
        dwords[6] = UInt32(truncatingIfNeeded: first)
        dwords[7] = UInt32(truncatingIfNeeded: first >> 32)
        dwords[8] = UInt32(truncatingIfNeeded: second)
        dwords[9] = UInt32(truncatingIfNeeded: second >> 32)
    }

    /// Starting LBA (dwords 10–11) and number of blocks, 0-based (dword 12, bits 15:0).
    mutating func setBlocks(lba: UInt64, count: Int) {
        dwords[10] = UInt32(truncatingIfNeeded: lba)
        dwords[11] = UInt32(truncatingIfNeeded: lba >> 32)
        dwords[12] = UInt32(count - 1)
    }
}

/// A 16-byte completion queue entry.
struct NVMeCompletion: Equatable, Sendable {
    var result: UInt32
    var submissionQueueHead: UInt16
    var identifier: UInt16
    /// Status Code Type (bits 27:25 of dword 3) and Status Code (24:17); both zero on success.
    var statusType: UInt8
    var statusCode: UInt8

    var succeeded: Bool { statusType == 0 && statusCode == 0 }
}
