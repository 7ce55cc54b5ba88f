import ModelessDevice

/// NVMe controller registers (NVM Express Base Specification 1.4, section 3.1), by name and
/// width, with their fields as named bits.
enum NVMeRegister {
    /// CAP, Controller Capabilities.
    static let capabilities = Register<UInt64>(0x00)
    /// VS, Version.
    static let version = Register<UInt32>(0x08)
    /// CC, Controller Configuration.
    static let configuration = Register<UInt32>(0x14)
    /// CSTS, Controller Status.
    static let status = Register<UInt32>(0x1C)
    /// AQA, Admin Queue Attributes.
    static let adminQueueAttributes = Register<UInt32>(0x24)
    /// ASQ, Admin Submission Queue Base Address.
    static let adminSubmissionQueue = Register<UInt64>(0x28)
    /// ACQ, Admin Completion Queue Base Address.
    static let adminCompletionQueue = Register<UInt64>(0x30)

    /// SQyTDBL, queue `queue`'s Submission Queue Tail Doorbell: 0x1000 + 2y × stride.
    static func submissionTailDoorbell(_ queue: UInt16, stride: Int) -> Register<UInt32> {
        Register<UInt32>(0x1000).advanced(by: 2 * Int(queue), stride: stride)
    }

    /// CQyHDBL, queue `queue`'s Completion Queue Head Doorbell: 0x1000 + (2y + 1) × stride.
    static func completionHeadDoorbell(_ queue: UInt16, stride: Int) -> Register<UInt32> {
        Register<UInt32>(0x1000).advanced(by: 2 * Int(queue) + 1, stride: stride)
    }
}

/// A field of a register or of a command dword: `width` bits from bit `low`.
struct BitField<Raw: FixedWidthInteger & UnsignedInteger>: Sendable {
    let low: Int
    let width: Int

    init(_ low: Int, width: Int) {
        self.low = low
        self.width = width
    }

    private var mask: Raw { width == Raw.bitWidth ? ~0 : (1 << Raw(width)) - 1 }

    /// The field's value in `raw`.
    func value(in raw: Raw) -> Raw { (raw >> Raw(low)) & mask }

    /// `raw` with the field set to `value` (which must fit).
    func setting(_ value: Raw, in raw: Raw) -> Raw {
        precondition(value <= mask, "\(value) does not fit a \(width)-bit field")
        return (raw & ~(mask << Raw(low))) | value << Raw(low)
    }
}

/// CAP, Controller Capabilities.
struct NVMeCapabilities: Sendable {
    let rawValue: UInt64

    /// MQES, Maximum Queue Entries Supported, 0-based.
    static let maximumQueueEntries = BitField<UInt64>(0, width: 16)
    /// TO, Timeout: the longest CSTS.RDY may take to follow CC.EN, in 500 ms units.
    static let timeout = BitField<UInt64>(24, width: 8)
    /// DSTRD, Doorbell Stride: doorbells are 4 << DSTRD bytes apart.
    static let doorbellStride = BitField<UInt64>(32, width: 4)
    /// CSS, Command Sets Supported; bit 0 of the field is the NVM command set.
    static let commandSets = BitField<UInt64>(37, width: 8)
    static let nvmCommandSet: UInt64 = 1

    /// How many entries a queue may have (MQES + 1).
    var queueEntryLimit: Int { Int(Self.maximumQueueEntries.value(in: rawValue)) + 1 }
    /// How long the controller may take to become ready or not ready (CAP.TO, at least 500 ms).
    var readyTimeout: Duration { .milliseconds(500 * max(1, Int(Self.timeout.value(in: rawValue)))) }
    /// Bytes between doorbells.
    var doorbellStride: Int { 4 << Int(Self.doorbellStride.value(in: rawValue)) }
    /// Whether the controller runs the NVM command set.
    var supportsNVMCommandSet: Bool { Self.commandSets.value(in: rawValue) & Self.nvmCommandSet != 0 }
    /// What a register reads when nothing answers.
    var isAllOnes: Bool { rawValue == .max }
}

/// VS, Version: MJR 31:16, MNR 15:8, TER 7:0.
struct NVMeVersion: Sendable, Comparable, CustomStringConvertible {
    let rawValue: UInt32

    static let majorField = BitField<UInt32>(16, width: 16)
    static let minorField = BitField<UInt32>(8, width: 8)

    var major: Int { Int(Self.majorField.value(in: rawValue)) }
    var minor: Int { Int(Self.minorField.value(in: rawValue)) }

    static func < (lhs: NVMeVersion, rhs: NVMeVersion) -> Bool { (lhs.major, lhs.minor) < (rhs.major, rhs.minor) }
    /// 1.1: the first version with the active namespace list (Identify CNS 02h).
    static let activeNamespaceList = NVMeVersion(rawValue: 1 << 16 | 1 << 8)
    var description: String { "\(major).\(minor)" }
}

/// CC, Controller Configuration.
struct NVMeConfiguration: OptionSet, Sendable {
    let rawValue: UInt32

    /// EN: the controller processes commands.
    static let enable = NVMeConfiguration(rawValue: 1 << 0)
    /// CSS, I/O Command Set Selected: 0 is the NVM command set.
    static let commandSet = BitField<UInt32>(4, width: 3)
    /// MPS, Memory Page Size: 2^(12 + MPS) bytes.
    static let memoryPageSize = BitField<UInt32>(7, width: 4)
    /// AMS, Arbitration Mechanism Selected: 0 is round robin.
    static let arbitration = BitField<UInt32>(11, width: 3)
    /// IOSQES, I/O Submission Queue Entry Size: 2^n bytes.
    static let submissionEntrySize = BitField<UInt32>(16, width: 4)
    /// IOCQES, I/O Completion Queue Entry Size: 2^n bytes.
    static let completionEntrySize = BitField<UInt32>(20, width: 4)

    subscript(field: BitField<UInt32>) -> UInt32 {
        get { field.value(in: rawValue) }
        set { self = NVMeConfiguration(rawValue: field.setting(newValue, in: rawValue)) }
    }
}

/// CSTS, Controller Status.
struct NVMeStatusRegister: OptionSet, Sendable {
    let rawValue: UInt32

    /// RDY: the controller is ready to process commands.
    static let ready = NVMeStatusRegister(rawValue: 1 << 0)
    /// CFS, Controller Fatal Status.
    static let fatal = NVMeStatusRegister(rawValue: 1 << 1)

    /// What the register reads when nothing answers (a removed device, a dead link).
    var isAllOnes: Bool { rawValue == .max }
}

/// AQA, Admin Queue Attributes: the admin queues' sizes, 0-based.
struct NVMeAdminQueueAttributes: Sendable {
    private(set) var rawValue: UInt32 = 0

    /// ASQS, Admin Submission Queue Size.
    static let submissionSize = BitField<UInt32>(0, width: 12)
    /// ACQS, Admin Completion Queue Size.
    static let completionSize = BitField<UInt32>(16, width: 12)

    init(submissionEntries: Int, completionEntries: Int) {
        rawValue = Self.submissionSize.setting(UInt32(submissionEntries - 1), in: rawValue)
        rawValue = Self.completionSize.setting(UInt32(completionEntries - 1), in: rawValue)
    }
}
