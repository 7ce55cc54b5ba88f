import ModelessDevice

/// The 8254x/8257x registers this driver uses, named as in Intel's PCI/PCI-X Family of Gigabit
/// Ethernet Controllers Software Developer's Manual (82540EM, section 13) and the 82574
/// datasheet (section 10); the offsets are the same on both.
enum E1000Register {
    /// CTRL: device control.
    static let control = Register<UInt32>(0x0000)
    /// STATUS: device status (link up, speed, duplex).
    static let status = Register<UInt32>(0x0008)
    /// CTRL_EXT: extended device control (82574L: MSI-X auto-clear and pending-bit behaviour).
    static let extendedControl = Register<UInt32>(0x0018)
    /// EERD: EEPROM read, one 16-bit word at a time (layout per model: ``E1000Variant``).
    static let eepromRead = Register<UInt32>(0x0014)
    /// ICR: interrupt cause read; reading clears it.
    static let interruptCause = Register<UInt32>(0x00C0)
    /// IMS: interrupt mask set (writing 1 enables a cause); reads the current mask.
    static let interruptMaskSet = Register<UInt32>(0x00D0)
    /// IMC: interrupt mask clear (writing 1 disables a cause).
    static let interruptMaskClear = Register<UInt32>(0x00D8)
    /// EIAC (82574L): the MSI-X causes cleared from ICR, and masked, when their vector fires.
    static let extendedAutoClear = Register<UInt32>(0x00DC)
    /// RCTL: receive control.
    static let receiveControl = Register<UInt32>(0x0100)
    /// TCTL: transmit control.
    static let transmitControl = Register<UInt32>(0x0400)
    /// TIPG: transmit inter-packet gap.
    static let transmitIPG = Register<UInt32>(0x0410)
    /// RDBAL, RDBAH, RDLEN, RDH, RDT: receive descriptor ring base, length in bytes, head, tail.
    static let receiveBaseLow = Register<UInt32>(0x2800)
    static let receiveBaseHigh = Register<UInt32>(0x2804)
    static let receiveLength = Register<UInt32>(0x2808)
    static let receiveHead = Register<UInt32>(0x2810)
    static let receiveTail = Register<UInt32>(0x2818)
    /// TDBAL, TDBAH, TDLEN, TDH, TDT: transmit descriptor ring base, length in bytes, head, tail.
    static let transmitBaseLow = Register<UInt32>(0x3800)
    static let transmitBaseHigh = Register<UInt32>(0x3804)
    static let transmitLength = Register<UInt32>(0x3808)
    static let transmitHead = Register<UInt32>(0x3810)
    static let transmitTail = Register<UInt32>(0x3818)
    /// GPTC: good packets transmitted, counted by the NIC; reading clears it.
    static let goodPacketsTransmitted = Register<UInt32>(0x4080)
    /// MTA[0]: the first of the 128 multicast table entries.
    static let multicastTable = Register<UInt32>(0x5200)
    static let multicastTableEntries = 128
    /// RAL0, RAH0: receive address 0 (the station's MAC address).
    static let receiveAddressLow = Register<UInt32>(0x5400)
    static let receiveAddressHigh = Register<UInt32>(0x5404)
}

/// CTRL bits.
struct DeviceControl: OptionSet {
    let rawValue: UInt32
    /// ASDE: auto-speed detection.
    static let autoSpeedDetection = DeviceControl(rawValue: 1 << 5)
    /// SLU: set link up.
    static let setLinkUp = DeviceControl(rawValue: 1 << 6)
    /// RST: global device reset; clears itself when the reset is done.
    static let reset = DeviceControl(rawValue: 1 << 26)
}

/// CTRL_EXT bits (82574L).
struct ExtendedControl: OptionSet {
    let rawValue: UInt32
    /// IAME: interrupt acknowledge auto-mask enable (kept clear: EIAC then also masks).
    static let autoMaskOnAcknowledge = ExtendedControl(rawValue: 1 << 27)
    /// PBA_CLR: masking a cause (IMC) clears its vector's MSI-X pending bit.
    static let clearPendingOnMask = ExtendedControl(rawValue: 1 << 31)
}

/// STATUS bits.
struct DeviceStatus: OptionSet {
    let rawValue: UInt32
    /// FD: full duplex.
    static let fullDuplex = DeviceStatus(rawValue: 1 << 0)
    /// LU: link up.
    static let linkUp = DeviceStatus(rawValue: 1 << 1)
}

/// ICR, IMS and IMC bits: the interrupt causes.
struct InterruptCauses: OptionSet {
    let rawValue: UInt32
    /// TXDW: a transmit descriptor was written back.
    static let transmitDescriptorWritten = InterruptCauses(rawValue: 1 << 0)
    /// LSC: link status change.
    static let linkStatusChange = InterruptCauses(rawValue: 1 << 2)
    /// RXDMT0: receive descriptors below the minimum threshold.
    static let receiveDescriptorsLow = InterruptCauses(rawValue: 1 << 4)
    /// RXO: receiver overrun (a frame arrived with no descriptor free).
    static let receiverOverrun = InterruptCauses(rawValue: 1 << 6)
    /// RXT0: receiver timer (frames were written to the ring).
    static let receiveTimer = InterruptCauses(rawValue: 1 << 7)
    /// RXQ0 (82574L, MSI-X only): frames were written to receive queue 0.
    static let receiveQueue0 = InterruptCauses(rawValue: 1 << 20)
    /// TXQ0 (82574L, MSI-X only): a descriptor of transmit queue 0 was written back.
    static let transmitQueue0 = InterruptCauses(rawValue: 1 << 22)
    /// OTHER (82574L, MSI-X only): a cause other than the queues' (link, overrun) is set.
    static let other = InterruptCauses(rawValue: 1 << 24)
    /// Every cause, for masking them all (IMC).
    static let all = InterruptCauses(rawValue: .max)
    /// The causes the receive DPC handles.
    static let receive: InterruptCauses = [.receiveTimer, .receiveDescriptorsLow, .receiverOverrun]
}

/// RCTL bits and fields.
struct ReceiveControl: OptionSet {
    let rawValue: UInt32
    /// EN: receiver enable.
    static let enable = ReceiveControl(rawValue: 1 << 1)
    /// BAM: accept broadcast frames.
    static let broadcastAccept = ReceiveControl(rawValue: 1 << 15)
    /// BSIZE = 00 with BSEX = 0: 2048-byte receive buffers.
    static let bufferSize2048: ReceiveControl = []
    /// SECRC: strip the Ethernet CRC from received frames.
    static let stripCRC = ReceiveControl(rawValue: 1 << 26)
}

/// TCTL bits and fields.
struct TransmitControl: OptionSet {
    let rawValue: UInt32
    /// EN: transmitter enable.
    static let enable = TransmitControl(rawValue: 1 << 1)
    /// PSP: pad short packets to 64 bytes.
    static let padShortPackets = TransmitControl(rawValue: 1 << 3)
    /// CT (bits 11:4): collision threshold; the manual recommends 0x0F (0x10 is the usual value).
    static func collisionThreshold(_ value: UInt32) -> TransmitControl { TransmitControl(rawValue: (value & 0xFF) << 4) }
    /// COLD (bits 21:12): collision distance; 0x40 for full duplex.
    static func collisionDistance(_ value: UInt32) -> TransmitControl { TransmitControl(rawValue: (value & 0x3FF) << 12) }
}

/// TIPG fields.
struct TransmitIPG: RawRepresentable {
    let rawValue: UInt32
    /// IPGT (bits 9:0), IPGR1 (19:10), IPGR2 (29:20), in byte times.
    init(transmit: UInt32, receive1: UInt32, receive2: UInt32) {
        rawValue = (transmit & 0x3FF) | (receive1 & 0x3FF) << 10 | (receive2 & 0x3FF) << 20
    }
    init(rawValue: UInt32) { self.rawValue = rawValue }
    /// The values the manual recommends for copper at 1 Gb/s: 10, 8, 6.
    static let copper = TransmitIPG(transmit: 10, receive1: 8, receive2: 6)
}

/// RAH bits.
struct ReceiveAddressHigh: OptionSet {
    let rawValue: UInt32
    /// AV: the address is valid and filters received frames.
    static let addressValid = ReceiveAddressHigh(rawValue: 1 << 31)
}
