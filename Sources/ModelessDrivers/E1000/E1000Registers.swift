/// Intel 8254x (82540EM, QEMU's `-device e1000`) registers, from the PCI/PCI-X Family of
/// Gigabit Ethernet Controllers Software Developer's Manual, section 13.
enum E1000Register {
    static let control = 0x0000              // CTRL
    static let status = 0x0008               // STATUS: bit 1 link up
    static let eepromRead = 0x0014           // EERD: START 0, DONE 4, ADDR 15:8, DATA 31:16
    static let interruptCause = 0x00C0       // ICR, cleared by reading
    static let interruptMaskSet = 0x00D0     // IMS
    static let interruptMaskClear = 0x00D8   // IMC
    static let receiveControl = 0x0100       // RCTL
    static let transmitControl = 0x0400      // TCTL
    static let transmitIPG = 0x0410          // TIPG
    static let receiveBaseLow = 0x2800, receiveBaseHigh = 0x2804, receiveLength = 0x2808
    static let receiveHead = 0x2810, receiveTail = 0x2818
    static let transmitBaseLow = 0x3800, transmitBaseHigh = 0x3804, transmitLength = 0x3808
    static let transmitHead = 0x3810, transmitTail = 0x3818
    static let multicastTable = 0x5200       // MTA[128]
    static let receiveAddressLow = 0x5400, receiveAddressHigh = 0x5404
    // Statistics, cleared by reading.
    static let goodPacketsReceived = 0x4074, goodPacketsTransmitted = 0x4080
    static let goodOctetsReceivedLow = 0x4088, goodOctetsTransmittedLow = 0x4090
}

enum E1000Bit {
    static let controlReset: UInt32 = 1 << 26
    static let controlSetLinkUp: UInt32 = 1 << 6
    static let controlAutoSpeed: UInt32 = 1 << 5
    static let statusLinkUp: UInt32 = 1 << 1
    static let receiveEnable: UInt32 = 1 << 1
    static let receiveBroadcastAccept: UInt32 = 1 << 15
    static let receiveStripCRC: UInt32 = 1 << 26
    static let transmitEnable: UInt32 = 1 << 1
    static let transmitPadShort: UInt32 = 1 << 3
    /// Interrupt causes: link status change, receive descriptors low, receiver overrun, receive timer.
    static let causeLinkStatus: UInt32 = 1 << 2
    static let causeReceiveLow: UInt32 = 1 << 4
    static let causeReceiveOverrun: UInt32 = 1 << 6
    static let causeReceiveTimer: UInt32 = 1 << 7
    /// Descriptor status: descriptor done, end of packet.
    static let descriptorDone: UInt8 = 1 << 0
    static let endOfPacket: UInt8 = 1 << 1
    /// Transmit command: end of packet, insert FCS, report status.
    static let commandEndOfPacket: UInt8 = 1 << 0
    static let commandInsertFCS: UInt8 = 1 << 1
    static let commandReportStatus: UInt8 = 1 << 3
}
