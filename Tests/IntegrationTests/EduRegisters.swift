/// QEMU's edu device (docs/specs/edu.rst in QEMU): the registers the tests drive.
enum Edu {
    static let identification = 0x00     // reads 0x010000ed
    static let liveness = 0x04           // reads back the bitwise NOT of what was written
    static let factorial = 0x08          // write n, read n! when status bit 0 clears
    static let status = 0x20             // bit 0: computing; bit 7: interrupt when factorial is done
    static let interruptStatus = 0x24
    static let raiseInterrupt = 0x60
    static let acknowledgeInterrupt = 0x64
    static let dmaSource = 0x80
    static let dmaDestination = 0x88
    static let dmaCount = 0x90
    static let dmaCommand = 0x98         // bit 0 start/busy, bit 1 device→RAM, bit 2 interrupt when done
    static let dmaBuffer: UInt64 = 0x40000
    static let dmaAddressBits = 28
}
