import ModelessBus
import ModelessDevice

/// The controllers the driver knows, and what differs between them: the layout of the EEPROM
/// read register (EERD), the interrupt kinds offered and, for MSI-X, how causes reach vectors. Everything else the driver uses
/// (legacy descriptors, the ring and control registers) is the same on both.
public struct E1000Variant: Sendable, Equatable, CustomStringConvertible {
    /// The controller's name.
    public let name: String
    /// Its PCI device id (vendor 8086).
    public let deviceID: UInt16
    /// EERD.DONE: which bit says the word has been read.
    let eepromDone: UInt32
    /// EERD.ADDR: where the word address starts.
    let eepromAddressShift: UInt32
    /// The interrupt kinds it offers, best first.
    public let interruptKinds: [InterruptKind]
    /// How causes are routed to MSI-X vectors; nil on a controller without MSI-X.
    public let msix: E1000MSIXRouting?

    /// Intel 82540EM (QEMU's `-device e1000`): EERD.DONE is bit 4, the address bits 15:8.
    /// QEMU's model offers INTx only.
    public static let i82540EM = E1000Variant(name: "82540EM", deviceID: 0x100E, eepromDone: 1 << 4,
                                              eepromAddressShift: 8, interruptKinds: [.intx], msix: nil)
    /// Intel 82574L (QEMU's `-device e1000e`, q35's default NIC): EERD.DONE is bit 1, the
    /// address bits 15:2; MSI-X (five vectors, routed by IVAR), MSI and INTx.
    public static let i82574L = E1000Variant(name: "82574L", deviceID: 0x10D3, eepromDone: 1 << 1,
                                             eepromAddressShift: 2, interruptKinds: [.msix, .msi, .intx], msix: .i82574L)
    /// Every controller the driver knows.
    public static let all: [E1000Variant] = [.i82540EM, .i82574L]
    /// Intel's PCI vendor id.
    public static let vendorID: UInt16 = 0x8086

    /// The known controller with these ids, if any.
    public static func identify(vendor: UInt16, device: UInt16) -> E1000Variant? {
        guard vendor == vendorID else { return nil }
        return all.first { $0.deviceID == device }
    }

    /// The controller's name (`82540EM`, `82574L`).
    public var description: String { name }

    // MARK: EERD

    /// EERD.START: begin reading the word in EERD.ADDR.
    static let eepromStart: UInt32 = 1 << 0
    /// EERD.DATA (bits 31:16): the word read.
    static let eepromDataShift: UInt32 = 16
    /// The largest word address EERD.ADDR holds on both controllers.
    static let eepromLastWord: UInt8 = 0xFF

    /// The EERD value that starts reading `word`.
    func eepromRequest(word: UInt8) -> UInt32 { Self.eepromStart | UInt32(word) << eepromAddressShift }

    /// The word in an EERD value whose DONE bit is set; nil while the read is in progress.
    func eepromWord(in value: UInt32) -> UInt16? {
        value & eepromDone != 0 ? UInt16(truncatingIfNeeded: value >> Self.eepromDataShift) : nil
    }
}
