import ModelessDevice

/// How a controller with MSI-X routes its interrupt causes to vectors: the 82574L's IVAR
/// register (datasheet 10.2.4.9) and its MSI-X-only causes. In MSI-X mode the controller
/// reports received frames as RXQ0 (not RXT0), written-back transmit descriptors as TXQ0 (not
/// TXDW), and every other cause (link status change, receiver overrun) as OTHER besides the
/// cause's own bit; each of the three is sent to the vector its IVAR entry names.
public struct E1000MSIXRouting: Sendable, Equatable {
    /// How many MSI-X vectors the controller has.
    public let vectors: Int
    /// IVAR: the interrupt vector allocation register.
    let register: Register<UInt32>
    /// Where each cause's 4-bit IVAR entry starts: bits 2:0 the vector, bit 3 valid.
    let receiveQueue0Shift: UInt32, transmitQueue0Shift: UInt32, otherShift: UInt32
    /// INT_ALLOC valid: the entry routes its cause.
    static let entryValid: UInt32 = 1 << 3
    /// The vector bits of an entry.
    static let entryVectorMask: UInt32 = 0b111

    /// The 82574L: five vectors; IVAR at 0xE4 with RxQ0 in bits 3:0, TxQ0 in 11:8, Other in 19:16.
    static let i82574L = E1000MSIXRouting(vectors: 5, register: Register<UInt32>(0x00E4),
                                          receiveQueue0Shift: 0, transmitQueue0Shift: 8, otherShift: 16)

    /// The IVAR value sending receive queue 0, transmit queue 0 and the other causes to
    /// `receive`, `transmit` and `other` (vector numbers below ``vectors``). Bit 31 (a
    /// transmit interrupt on every write-back, whatever RS says) stays clear.
    func allocation(receive: Int, transmit: Int, other: Int) -> UInt32 {
        precondition([receive, transmit, other].allSatisfy { (0..<vectors).contains($0) }, "an MSI-X vector below \(vectors)")
        let entry = { (vector: Int) in Self.entryValid | UInt32(vector) & Self.entryVectorMask }
        return entry(receive) << receiveQueue0Shift | entry(transmit) << transmitQueue0Shift | entry(other) << otherShift
    }
}
