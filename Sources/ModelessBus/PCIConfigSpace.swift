/// A read-only view of a function's configuration space bytes, with the fields and
/// capability lists a driver writer needs.
///
/// The capability walks are bounded and remember where they have been, so a device that
/// reports a capability list with a cycle or a pointer out of range cannot make them loop.
public struct PCIConfigSpace: Sendable, Equatable {
    /// The bytes as read: 64 (unprivileged sysfs read), 256 (conventional) or 4096 (PCIe extended).
    public let bytes: [UInt8]

    /// A view of `bytes`, read from sysfs's `config` file or a device model.
    public init(bytes: [UInt8]) {
        self.bytes = bytes
    }

    /// Offsets of the standard header fields (PCI Local Bus Specification, type 0/1 header).
    public enum Offset {
        /// Vendor ID, 16 bits.
        public static let vendorID = 0x00
        /// Device ID, 16 bits.
        public static let deviceID = 0x02
        /// Command register, 16 bits (memory space, bus master, INTx disable, ...).
        public static let command = 0x04
        /// Status register, 16 bits (capability list, INTx status, errors).
        public static let status = 0x06
        /// Revision ID, 8 bits.
        public static let revision = 0x08
        /// Class code, 24 bits from here: programming interface, subclass, base class.
        public static let classCode = 0x09
        /// Header type, 8 bits (bit 7: multi-function).
        public static let headerType = 0x0E
        /// Subsystem vendor ID, 16 bits (type 0 header).
        public static let subsystemVendorID = 0x2C
        /// Subsystem ID, 16 bits (type 0 header).
        public static let subsystemID = 0x2E
        /// Capabilities pointer, 8 bits: the first capability's offset.
        public static let capabilitiesPointer = 0x34
        /// Interrupt line, 8 bits: the legacy IRQ routing the firmware wrote.
        public static let interruptLine = 0x3C
        /// Interrupt pin, 8 bits: 0 for none, 1–4 for INTA#–INTD#.
        public static let interruptPin = 0x3D
    }

    /// Status register bit 4: the function has a capability list.
    public static let statusCapabilitiesList: UInt16 = 1 << 4

    /// The byte at `offset`, or nil outside the bytes read.
    public func byte(at offset: Int) -> UInt8? {
        offset >= 0 && offset < bytes.count ? bytes[offset] : nil
    }

    /// The little-endian 16-bit value at `offset`, or nil if any of its bytes was not read.
    public func word(at offset: Int) -> UInt16? {
        guard offset >= 0, offset + 2 <= bytes.count else { return nil }
        return UInt16(bytes[offset]) | UInt16(bytes[offset + 1]) << 8
    }

    /// The little-endian 32-bit value at `offset`, or nil if any of its bytes was not read.
    public func dword(at offset: Int) -> UInt32? {
        guard let low = word(at: offset), let high = word(at: offset + 2) else { return nil }
        return UInt32(low) | UInt32(high) << 16
    }

    /// The vendor ID, or nil if fewer than 2 bytes were read.
    public var vendorID: UInt16? { word(at: Offset.vendorID) }
    /// The device ID.
    public var deviceID: UInt16? { word(at: Offset.deviceID) }
    /// The command register.
    public var command: UInt16? { word(at: Offset.command) }
    /// The status register.
    public var status: UInt16? { word(at: Offset.status) }
    /// The revision ID.
    public var revision: UInt8? { byte(at: Offset.revision) }
    /// The 24-bit class code: base class, subclass, programming interface.
    public var classCode: UInt32? {
        guard let progIf = byte(at: 0x09), let sub = byte(at: 0x0A), let base = byte(at: 0x0B) else { return nil }
        return UInt32(base) << 16 | UInt32(sub) << 8 | UInt32(progIf)
    }
    /// The header layout without the multi-function bit: 0 for an endpoint, 1 for a PCI-to-PCI
    /// bridge, 2 for a CardBus bridge.
    public var headerType: UInt8? { byte(at: Offset.headerType).map { $0 & 0x7F } }
    /// The interrupt pin: 0 for none, 1–4 for INTA#–INTD#.
    public var interruptPin: UInt8? { byte(at: Offset.interruptPin) }

    /// Whether the standard capability list (offsets 0x40–0xFF) can be read from these bytes.
    public var hasReadableCapabilityList: Bool { bytes.count >= 256 }

    /// The standard capabilities, in list order, stopping at the end, a repeated offset,
    /// an offset outside 0x40–0xFC, or after 48 entries (the most that fit).
    public var capabilities: [PCICapability] {
        guard hasReadableCapabilityList, let status, status & Self.statusCapabilitiesList != 0,
              var pointer = byte(at: Offset.capabilitiesPointer).map({ Int($0 & 0xFC) }) else { return [] }
        var found: [PCICapability] = []
        var visited = Set<Int>()
        while pointer >= 0x40, pointer <= 0xFC, visited.insert(pointer).inserted, found.count < 48 {
            guard let id = byte(at: pointer), let next = byte(at: pointer + 1) else { break }
            found.append(PCICapability(id: UInt16(id), offset: pointer, isExtended: false))
            pointer = Int(next & 0xFC)
        }
        return found
    }

    /// The PCI Express extended capabilities (offsets 0x100–0xFFC), bounded the same way.
    public var extendedCapabilities: [PCICapability] {
        guard bytes.count >= 4096 else { return [] }
        var found: [PCICapability] = []
        var visited = Set<Int>()
        var pointer = 0x100
        while pointer >= 0x100, pointer <= 0xFFC, visited.insert(pointer).inserted, found.count < 960 {
            guard let header = dword(at: pointer), header != 0, header != 0xFFFF_FFFF else { break }
            found.append(PCICapability(id: UInt16(header & 0xFFFF), offset: pointer, isExtended: true))
            pointer = Int(header >> 20) & 0xFFC
        }
        return found
    }

    /// The first standard capability with `id`, if present.
    public func capability(_ id: PCICapability.ID) -> PCICapability? {
        capabilities.first { $0.id == id.rawValue }
    }

    /// What the function offers for interrupts, read from the header and the MSI/MSI-X capabilities.
    public var interrupts: InterruptCapabilities {
        var result = InterruptCapabilities(intxPin: interruptPin ?? 0)
        if let msi = capability(.msi), let control = word(at: msi.offset + 2) {
            // Message Control bits 3:1, Multiple Message Capable: log2 of the vectors supported.
            let multipleMessageCapable = min(Int((control >> 1) & 0x7), 5)
            result.msi = .init(vectors: 1 << multipleMessageCapable,
                               is64Bit: control & (1 << 7) != 0,
                               perVectorMasking: control & (1 << 8) != 0)
        }
        if let msix = capability(.msix), let control = word(at: msix.offset + 2),
           let table = dword(at: msix.offset + 4), let pending = dword(at: msix.offset + 8) {
            // Message Control bits 10:0, Table Size, encoded as N-1.
            result.msix = .init(vectors: Int(control & 0x7FF) + 1,
                                tableBAR: Int(table & 0x7), tableOffset: Int(table & ~0x7),
                                pendingBAR: Int(pending & 0x7), pendingOffset: Int(pending & ~0x7))
        }
        return result
    }
}

/// One entry of a capability list.
public struct PCICapability: Sendable, Equatable, Codable {
    /// Standard capability ids (PCI Code and ID Assignment Specification).
    public enum ID: UInt16, Sendable {
        case powerManagement = 0x01, agp = 0x02, vpd = 0x03, slotID = 0x04, msi = 0x05, hotSwap = 0x06
        case pcix = 0x07, hyperTransport = 0x08, vendorSpecific = 0x09, debugPort = 0x0A
        case bridgeSubsystemID = 0x0D, agp8x = 0x0E, secureDevice = 0x0F, pciExpress = 0x10, msix = 0x11
        case sata = 0x12, advancedFeatures = 0x13, enhancedAllocation = 0x14
    }

    /// The capability's id: a standard ``ID`` raw value, or an extended capability's 16-bit id.
    public var id: UInt16
    /// The capability's offset in configuration space.
    public var offset: Int
    /// Whether this is a PCI Express extended capability (offset ≥ 0x100).
    public var isExtended: Bool

    /// A capability as a walk found it.
    public init(id: UInt16, offset: Int, isExtended: Bool) {
        self.id = id
        self.offset = offset
        self.isExtended = isExtended
    }

    /// A readable name, as `lspci -vv` would print it.
    public var name: String {
        isExtended ? Self.extendedNames[id] ?? "Extended capability 0x\(hex(id, width: 4))"
                   : Self.standardNames[id] ?? "Capability 0x\(hex(id, width: 2))"
    }

    static let standardNames: [UInt16: String] = [
        0x01: "Power Management", 0x02: "AGP", 0x03: "Vital Product Data", 0x04: "Slot Identification",
        0x05: "MSI", 0x06: "CompactPCI Hot Swap", 0x07: "PCI-X", 0x08: "HyperTransport",
        0x09: "Vendor Specific", 0x0A: "Debug Port", 0x0B: "CompactPCI Resource Control",
        0x0C: "PCI Hot-Plug", 0x0D: "Bridge Subsystem ID", 0x0E: "AGP 8x", 0x0F: "Secure Device",
        0x10: "PCI Express", 0x11: "MSI-X", 0x12: "SATA", 0x13: "Advanced Features", 0x14: "Enhanced Allocation",
    ]

    static let extendedNames: [UInt16: String] = [
        0x01: "Advanced Error Reporting", 0x02: "Virtual Channel", 0x03: "Device Serial Number",
        0x04: "Power Budgeting", 0x0B: "Vendor Specific", 0x0D: "Access Control Services",
        0x0E: "Alternative Routing-ID Interpretation", 0x0F: "Address Translation Services",
        0x10: "Single Root I/O Virtualization", 0x13: "Page Request", 0x15: "Resizable BAR",
        0x18: "Latency Tolerance Reporting", 0x19: "Secondary PCI Express", 0x1E: "L1 PM Substates",
        0x1F: "Precision Time Measurement", 0x25: "Data Link Feature", 0x26: "Physical Layer 16.0 GT/s",
    ]
}

/// The interrupt mechanisms a function offers.
public struct InterruptCapabilities: Sendable, Equatable, Codable {
    /// MSI support from the MSI capability.
    public struct MSI: Sendable, Equatable, Codable {
        /// Vectors the function can use (Multiple Message Capable): 1, 2, 4, ... 32.
        public var vectors: Int
        /// The function takes a 64-bit message address.
        public var is64Bit: Bool
        /// The function can mask each vector on its own.
        public var perVectorMasking: Bool
    }

    /// MSI-X support from the MSI-X capability: vector count and where its table lives.
    public struct MSIX: Sendable, Equatable, Codable {
        /// Vectors in the MSI-X table (Table Size + 1), up to 2048.
        public var vectors: Int
        /// The BAR holding the vector table (BIR).
        public var tableBAR: Int
        /// The table's byte offset in that BAR.
        public var tableOffset: Int
        /// The BAR holding the pending bit array.
        public var pendingBAR: Int
        /// The pending bit array's byte offset in that BAR.
        public var pendingOffset: Int
    }

    /// 0 when the function has no legacy interrupt, else 1–4 for INTA#–INTD#.
    public var intxPin: UInt8
    /// MSI, or nil without an MSI capability (or when configuration space could not be read).
    public var msi: MSI?
    /// MSI-X, or nil without an MSI-X capability (or when configuration space could not be read).
    public var msix: MSIX?

    /// The mechanisms found: the INTx pin and the MSI and MSI-X capabilities, if any.
    public init(intxPin: UInt8, msi: MSI? = nil, msix: MSIX? = nil) {
        self.intxPin = intxPin
        self.msi = msi
        self.msix = msix
    }

    /// `INTA`…`INTD`, or `nil` when there is no pin.
    public var intxPinName: String? {
        (1...4).contains(intxPin) ? "INT" + String(UnicodeScalar(UInt8(ascii: "A") + intxPin - 1)) : nil
    }

    /// A one-line summary such as `INTx (INTA), MSI (1 vector), MSI-X (64 vectors)`.
    public var summary: String {
        var parts: [String] = []
        if let pin = intxPinName { parts.append("INTx (\(pin))") }
        if let msi { parts.append("MSI (\(msi.vectors) vector\(msi.vectors == 1 ? "" : "s"))") }
        if let msix { parts.append("MSI-X (\(msix.vectors) vector\(msix.vectors == 1 ? "" : "s"))") }
        return parts.isEmpty ? "none" : parts.joined(separator: ", ")
    }
}
