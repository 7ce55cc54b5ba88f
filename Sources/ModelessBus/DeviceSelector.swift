/// How a person names a PCI function on the command line.
public enum DeviceSelector: Sendable, Equatable, CustomStringConvertible {
    /// `0000:03:00.0` or `03:00.0`.
    case address(PCIAddress)
    /// `8086:100e`: the one function with these vendor and device ids.
    case ids(vendor: UInt16, device: UInt16)

    /// The accepted forms, for error messages.
    public static let acceptedForms = "0000:03:00.0, 03:00.0, or a vendor:device id such as 8086:100e"

    /// Parses a selector, or throws ``BusError`` (`.malformedAddress`) naming the accepted forms.
    public init(parsing text: String) throws(BusError) {
        let trimmed = text.trimmingCharacters(in: " \t\n")
        if let address = PCIAddress(trimmed) {
            self = .address(address)
            return
        }
        let halves = trimmed.split(separator: ":", omittingEmptySubsequences: false)
        if halves.count == 2, halves.allSatisfy({ $0.count == 4 }),
           let vendor = UInt16(halves[0], radix: 16), let device = UInt16(halves[1], radix: 16) {
            self = .ids(vendor: vendor, device: device)
            return
        }
        throw BusError(.malformedAddress,
                       "'\(text)' is not a PCI address or vendor:device id",
                       remedy: "name the device as \(Self.acceptedForms); `modeless list` shows them")
    }

    public var description: String {
        switch self {
        case .address(let address): address.description
        case .ids(let vendor, let device): "\(hex(vendor, width: 4)):\(hex(device, width: 4))"
        }
    }
}

extension String {
    func trimmingCharacters(in characters: String) -> String {
        let set = Set(characters)
        guard let first = firstIndex(where: { !set.contains($0) }),
              let last = lastIndex(where: { !set.contains($0) }) else { return "" }
        return String(self[first...last])
    }
}
