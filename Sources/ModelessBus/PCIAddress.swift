/// A PCI function's address, `domain:bus:device.function`, as in `0000:03:00.0`.
public struct PCIAddress: Hashable, Comparable, Sendable, CustomStringConvertible, Codable {
    /// The PCI segment (domain); usually 0. Up to 32 bits on systems with VMD.
    public var domain: UInt32
    /// The bus number, 0–255.
    public var bus: UInt8
    /// The device number, 0–31.
    public var device: UInt8
    /// The function number, 0–7.
    public var function: UInt8

    /// The address `domain:bus:device.function`.
    /// - Precondition: `device` < 32 and `function` < 8 (the fields' widths); parse text with
    ///   ``init(_:)``, which answers nil instead.
    public init(domain: UInt32 = 0, bus: UInt8, device: UInt8, function: UInt8) {
        precondition(device < 32 && function < 8, "PCI device must be < 32 and function < 8")
        self.domain = domain
        self.bus = bus
        self.device = device
        self.function = function
    }

    /// Parses `DDDD:BB:DD.F` or `BB:DD.F` (domain 0), in hexadecimal as the kernel writes them.
    ///
    /// Returns `nil` for anything else; ``DeviceSelector`` turns that into an error that shows
    /// the accepted forms.
    public init?(_ text: String) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2 || parts.count == 3 else { return nil }
        let domainText = parts.count == 3 ? parts[0] : "0"
        let busText = parts[parts.count - 2]
        let slot = parts[parts.count - 1].split(separator: ".", omittingEmptySubsequences: false)
        guard slot.count == 2,
              (1...8).contains(domainText.count), (1...2).contains(busText.count),
              (1...2).contains(slot[0].count), slot[1].count == 1,
              let domain = UInt32(domainText, radix: 16),
              let bus = UInt8(busText, radix: 16),
              let device = UInt8(slot[0], radix: 16), device < 32,
              let function = UInt8(slot[1], radix: 16), function < 8
        else { return nil }
        self.init(domain: domain, bus: bus, device: device, function: function)
    }

    /// The kernel's spelling, `0000:03:00.0`, used for sysfs paths.
    public var description: String {
        "\(hex(domain, width: 4)):\(hex(bus, width: 2)):\(hex(device, width: 2)).\(String(function, radix: 16))"
    }

    /// Bus order: by domain, bus, device, then function, as `lspci` lists them.
    public static func < (lhs: PCIAddress, rhs: PCIAddress) -> Bool {
        (lhs.domain, lhs.bus, lhs.device, lhs.function) < (rhs.domain, rhs.bus, rhs.device, rhs.function)
    }

    /// Decodes the kernel's spelling from a JSON string (the binding record, the override files).
    /// - Throws: `DecodingError.dataCorrupted` naming the text when it is not an address.
    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let address = PCIAddress(text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "bad PCI address \(text)"))
        }
        self = address
    }

    /// Encodes the address as a string in the kernel's spelling, `0000:03:00.0`.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// Lower-case hexadecimal, zero-padded to `width` digits.
func hex<Value: BinaryInteger>(_ value: Value, width: Int) -> String {
    let digits = String(value, radix: 16)
    return String(repeating: "0", count: max(0, width - digits.count)) + digits
}
