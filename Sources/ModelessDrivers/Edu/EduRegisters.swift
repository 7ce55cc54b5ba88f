import ModelessDevice

/// The edu device's registers (QEMU docs/specs/edu.rst), as the driver names them. Registers
/// below 0x80 take 4-byte accesses only; the DMA registers are 8 bytes wide.
enum EduRegister {
    /// Reads ``EduIdentification/expected``: major version 1, minor 0, and the 0xed signature.
    static let identification = Register<UInt32>(0x00)
    /// Reads back the bitwise NOT of what was written.
    static let liveness = Register<UInt32>(0x04)
    /// Write n to start computing n!; read the result once ``EduStatus/computing`` clears.
    static let factorial = Register<UInt32>(0x08)
    /// ``EduStatus``.
    static let status = Register<UInt32>(0x20)
    /// The ``EduInterruptCause``s of the pending interrupt.
    static let interruptStatus = Register<UInt32>(0x24)
    /// Write causes to raise an interrupt with them.
    static let raiseInterrupt = Register<UInt32>(0x60)
    /// Write causes to clear them (the ISR must, with MSI too); the INTx line drops when none is left.
    static let acknowledgeInterrupt = Register<UInt32>(0x64)
    /// Where a transfer reads from, where it writes to, and how many bytes it moves; ignored
    /// while a transfer runs.
    static let dmaSource = Register<UInt64>(0x80)
    static let dmaDestination = Register<UInt64>(0x88)
    static let dmaCount = Register<UInt64>(0x90)
    /// ``EduDMACommand``.
    static let dmaCommand = Register<UInt64>(0x98)
}

/// The identification register's value, and the device's DMA layout.
enum EduIdentification {
    static let expected: UInt32 = 0x0100_00ed
    /// The device's own 4 KiB buffer, at this device address.
    static let bufferAddress: UInt64 = 0x40000
    /// The device drives 28 address bits.
    static let dmaAddressBits = 28
}

/// The status register's bits.
struct EduStatus: OptionSet {
    let rawValue: UInt32
    /// A factorial is being computed; the factorial register is ignored when written.
    static let computing = EduStatus(rawValue: 1 << 0)
    /// Raise ``EduInterruptCause/factorialDone`` when a factorial is done.
    static let raiseInterruptOnFactorial = EduStatus(rawValue: 1 << 7)
}

/// The DMA command register's bits.
struct EduDMACommand: OptionSet {
    let rawValue: UInt64
    /// Starts a transfer; reads 1 while it runs.
    static let start = EduDMACommand(rawValue: 1 << 0)
    /// The direction: set, device buffer → RAM; clear, RAM → device buffer.
    static let toRAM = EduDMACommand(rawValue: 1 << 1)
    /// Raise ``EduInterruptCause/dmaDone`` when the transfer is done.
    static let raiseInterrupt = EduDMACommand(rawValue: 1 << 2)
}

/// Why the device interrupted: the interrupt status register's bits. Any other bit is a cause
/// software raised through the raise register.
public struct EduInterruptCause: OptionSet, Sendable, Hashable {
    /// The interrupt status register's value.
    public let rawValue: UInt32
    /// Causes from a status register value; unknown bits are kept.
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// A factorial started with the status register's raise-interrupt bit (`EduStatus.raiseInterruptOnFactorial`) finished.
    public static let factorialDone = EduInterruptCause(rawValue: 1 << 0)
    /// A DMA transfer started with the DMA command's raise-interrupt bit (`EduDMACommand.raiseInterrupt`) finished.
    public static let dmaDone = EduInterruptCause(rawValue: 1 << 8)
}
