/// The kinds of device `bind --class` and `list --class` select: a whole PCI base class at once.
public enum DeviceClass: String, Sendable, CaseIterable, Codable {
    /// Network controllers (base class 0x02): Ethernet, InfiniBand and the like.
    case net
    /// Mass storage controllers (base class 0x01): NVMe, SATA/AHCI, SCSI, RAID.
    case storage

    /// The PCI base class the kind stands for.
    public var baseClass: UInt8 {
        switch self {
        case .net: 0x02
        case .storage: 0x01
        }
    }

    /// `network devices`, `storage devices`: for messages.
    public var plural: String {
        switch self {
        case .net: "network devices"
        case .storage: "storage devices"
        }
    }

    /// Whether a function belongs to the class.
    public func contains(_ device: PCIDevice) -> Bool {
        UInt8(truncatingIfNeeded: device.classCode >> 16) == baseClass
    }

    /// The accepted names, for messages: `net, storage`.
    public static let acceptedNames = allCases.map(\.rawValue).joined(separator: ", ")
}

extension PCIBus {
    /// Every function of `deviceClass`, sorted by address.
    /// - Throws: ``BusError`` `.noSuchDevice` when the machine has none, naming the class.
    public func devices(in deviceClass: DeviceClass) throws(BusError) -> [PCIDevice] {
        let members = try devices().filter(deviceClass.contains)
        guard !members.isEmpty else {
            throw BusError(.noSuchDevice,
                           "no \(deviceClass.plural) (PCI class 0x\(hex(deviceClass.baseClass, width: 2))) on this machine",
                           remedy: "`modeless list` shows the devices present; --class takes \(DeviceClass.acceptedNames)")
        }
        return members
    }
}
