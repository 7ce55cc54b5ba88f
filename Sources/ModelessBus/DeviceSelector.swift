/// How a person names a PCI function on the command line.
public enum DeviceSelector: Sendable, Equatable, CustomStringConvertible {
    /// `0000:03:00.0` or `03:00.0`.
    case address(PCIAddress)
    /// `8086:100e`: the one function with these vendor and device ids.
    case ids(vendor: UInt16, device: UInt16)
    /// `eth1` or `nvme1n1` (`/dev/nvme1n1`, a partition such as `nvme1n1p2`): the function
    /// whose network interface or block device has this name.
    case kernelName(String)

    /// The accepted forms, for error messages.
    public static let acceptedForms = "0000:03:00.0, 03:00.0, a vendor:device id such as 8086:100e, an interface (eth1) or a block device (nvme1n1)"

    /// The longest interface or block device name accepted (block device names are limited to 32 bytes).
    static let longestKernelName = 32

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
        let name = trimmed.hasPrefix("/dev/") ? String(trimmed.dropFirst("/dev/".count)) : trimmed
        if Self.isKernelName(name) {
            self = .kernelName(name)
            return
        }
        throw BusError(.malformedAddress,
                       "'\(text)' is not a PCI address or vendor:device id, nor an interface or block device name",
                       remedy: "name the device as \(Self.acceptedForms); `modeless list` shows them")
    }

    /// The selector as a person writes it: an address in the kernel's spelling, `vvvv:dddd`, or the
    /// interface or block device name.
    public var description: String {
        switch self {
        case .address(let address): address.description
        case .ids(let vendor, let device): "\(hex(vendor, width: 4)):\(hex(device, width: 4))"
        case .kernelName(let name): name
        }
    }

    /// A name the kernel could give an interface or block device: letters, digits, `_`, `-`, `.`
    /// and `@`; never `:` (which addresses and ids use) or `/`.
    static func isKernelName(_ name: String) -> Bool {
        guard !name.isEmpty, name.utf8.count <= longestKernelName, name != ".", name != ".." else { return false }
        return name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "_-.@".contains($0)) }
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
