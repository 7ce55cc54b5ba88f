/// The edu device's registers (QEMU docs/specs/edu.rst), as the driver names them.
enum EduRegister {
    /// Reads 0x010000ed: major version 1, minor 0, and the 0xed signature.
    static let identification = 0x00
    /// Reads back the bitwise NOT of what was written.
    static let liveness = 0x04
    /// Write n to start computing n!; read the result when the status says it is done.
    static let factorial = 0x08
    /// Bit 0: computing. Bit 7: raise an interrupt when the factorial is done.
    static let status = 0x20
    /// The causes of the pending interrupt.
    static let interruptStatus = 0x24
    /// Write a cause to raise an interrupt with it.
    static let raiseInterrupt = 0x60
    /// Write causes to clear them (the ISR must, with MSI too).
    static let acknowledgeInterrupt = 0x64
    static let dmaSource = 0x80
    static let dmaDestination = 0x88
    static let dmaCount = 0x90
    /// Bit 0: start (reads 1 while running). Bit 1: device to RAM. Bit 2: interrupt when done.
    static let dmaCommand = 0x98
}

enum EduValue {
    static let identification: UInt32 = 0x0100_00ed
    static let factorialDone: UInt32 = 0x0000_0001
    static let dmaDone: UInt32 = 0x0000_0100
    static let interruptOnFactorial: UInt32 = 0x80
    static let dmaStart: UInt64 = 0b001
    static let dmaToRAM: UInt64 = 0b010
    static let dmaInterrupt: UInt64 = 0b100
    /// The device's own 4 KiB buffer, at this device address.
    static let bufferAddress: UInt64 = 0x40000
    /// The device drives 28 address bits.
    static let dmaAddressBits = 28
}
