/// What a driver's match table is compared with: the ids in a PCI function's configuration
/// header (vendor, device, subsystem vendor and device, class code).
public struct PCIIdentity: Sendable, Hashable, CustomStringConvertible {
    /// Vendor ID.
    public var vendor: UInt16
    /// Device ID.
    public var device: UInt16
    /// Subsystem vendor ID (0 when the function has none, e.g. a bridge).
    public var subsystemVendor: UInt16
    /// Subsystem device ID (0 when the function has none).
    public var subsystemDevice: UInt16
    /// Base class, subclass and programming interface, in the low 24 bits.
    public var classCode: UInt32

    /// An identity; the subsystem ids and class code default to 0, for tables and tests that name
    /// only vendor and device.
    public init(vendor: UInt16, device: UInt16, subsystemVendor: UInt16 = 0, subsystemDevice: UInt16 = 0, classCode: UInt32 = 0) {
        self.vendor = vendor
        self.device = device
        self.subsystemVendor = subsystemVendor
        self.subsystemDevice = subsystemDevice
        self.classCode = classCode & 0xFF_FFFF
    }

    /// `1234:11e8 (subsystem 1af4:1100, class 00ff00)`.
    public var description: String {
        "\(hexDigits(vendor, 4)):\(hexDigits(device, 4)) (subsystem \(hexDigits(subsystemVendor, 4)):\(hexDigits(subsystemDevice, 4)), class \(hexDigits(classCode, 6)))"
    }
}

/// One entry of a driver's match table, as Linux's `struct pci_device_id`: a field left `nil`
/// matches any value (`PCI_ANY_ID`), and the class code is compared under a mask (a zero mask
/// does not compare it).
///
/// ```swift
/// PCIMatch(vendor: 0x8086, device: 0x100e, name: "82540EM")
/// PCIMatch(classCode: 0x01_08_02, name: "NVM Express")   // any vendor
/// ```
public struct PCIMatch: Sendable, Hashable, CustomStringConvertible {
    /// The vendor ID to compare, or nil for any vendor.
    public var vendor: UInt16?
    /// The device ID to compare, or nil for any device.
    public var device: UInt16?
    /// The subsystem vendor ID to compare, or nil for any.
    public var subsystemVendor: UInt16?
    /// The subsystem device ID to compare, or nil for any.
    public var subsystemDevice: UInt16?
    /// The class code to compare, under ``classMask``.
    public var classCode: UInt32
    /// The bits of the class code compared: 0xFFFFFF for class, subclass and interface,
    /// 0xFFFF00 for class and subclass, 0 for none.
    public var classMask: UInt32
    /// What the entry stands for, for people (a chip's name); not compared.
    public var name: String?

    /// An entry for a vendor's device, optionally narrowed to a subsystem and a class.
    public init(vendor: UInt16?, device: UInt16?, subsystemVendor: UInt16? = nil, subsystemDevice: UInt16? = nil,
                classCode: UInt32 = 0, classMask: UInt32 = 0, name: String? = nil) {
        precondition(classMask <= 0xFF_FFFF && classCode & ~classMask == 0,
                     "a class code must be 24 bits and have no bit outside its mask")
        self.vendor = vendor
        self.device = device
        self.subsystemVendor = subsystemVendor
        self.subsystemDevice = subsystemDevice
        self.classCode = classCode
        self.classMask = classMask
        self.name = name
    }

    /// An entry for every function of a class, whatever its vendor.
    public init(classCode: UInt32, mask: UInt32 = 0xFF_FFFF, name: String? = nil) {
        self.init(vendor: nil, device: nil, classCode: classCode, classMask: mask, name: name)
    }

    /// Whether the function with `identity` matches this entry.
    public func matches(_ identity: PCIIdentity) -> Bool {
        (vendor.map { $0 == identity.vendor } ?? true)
            && (device.map { $0 == identity.device } ?? true)
            && (subsystemVendor.map { $0 == identity.subsystemVendor } ?? true)
            && (subsystemDevice.map { $0 == identity.subsystemDevice } ?? true)
            && identity.classCode & classMask == classCode
    }

    /// How narrowly the entry names a function, to choose between several that match: each id
    /// outweighs any class comparison (as a hardware id outranks a compatible id), and more
    /// ids, or more class bits, are narrower.
    public var specificity: Int {
        [vendor, device, subsystemVendor, subsystemDevice].filter { $0 != nil }.count * 32 + classMask.nonzeroBitCount
    }

    /// `8086:100e`, `8086:100e subsystem 8086:001e`, `class 010802`, `class 0108xx`.
    public var description: String {
        var parts: [String] = []
        if vendor != nil || device != nil {
            parts.append("\(vendor.map { hexDigits($0, 4) } ?? "*"):\(device.map { hexDigits($0, 4) } ?? "*")")
        }
        if subsystemVendor != nil || subsystemDevice != nil {
            parts.append("subsystem \(subsystemVendor.map { hexDigits($0, 4) } ?? "*"):\(subsystemDevice.map { hexDigits($0, 4) } ?? "*")")
        }
        if classMask != 0 {
            let bytes = [16, 8, 0].map { shift -> String in
                switch classMask >> shift & 0xFF {
                case 0xFF: hexDigits(classCode >> shift & 0xFF, 2)
                case 0: "xx"
                default: "(\(hexDigits(classCode >> shift & 0xFF, 2))/\(hexDigits(classMask >> shift & 0xFF, 2)))"
                }
            }
            parts.append("class " + bytes.joined())
        }
        return parts.isEmpty ? "any device" : parts.joined(separator: " ")
    }
}

/// `value` in lower-case hexadecimal, padded with zeros to `width` digits.
func hexDigits<Value: BinaryInteger>(_ value: Value, _ width: Int) -> String {
    let digits = String(value, radix: 16)
    return String(repeating: "0", count: max(0, width - digits.count)) + digits
}
