import ModelessBus
import ModelessDrivers

/// A device as `--json` prints it: ids as lower-case hex strings, the way `lspci -nn` shows them.
package struct DeviceJSON: Encodable {
    struct Bar: Encodable {
        var index: Int
        var space: String
        var start: String
        var size: UInt64
        var is64Bit: Bool
        var isPrefetchable: Bool
    }

    struct Capability: Encodable {
        var id: String
        var offset: String
        var name: String
        var extended: Bool
    }

    var address: String
    var vendorId: String
    var deviceId: String
    var subsystemVendorId: String
    var subsystemDeviceId: String
    var classCode: String
    var revision: String
    var vendorName: String?
    var deviceName: String?
    var subsystemName: String?
    var className: String?
    var driver: String?
    var driverOverride: String?
    var iommuGroup: Int?
    var iommuGroupPeers: [String]
    var numaNode: Int?
    var bars: [Bar]
    var interrupts: InterruptCapabilities
    var capabilitiesReadable: Bool
    var capabilities: [Capability]
    var kernelUses: [String]
    var activeInKernel: Bool
    var userModeNode: String?
    /// The sample driver whose match table takes the device (`modeless run ADDR` runs it).
    var matchingDriver: String?

    /// The JSON of `device`, with its names, driver, IOMMU group and kernel uses as `bus` finds them.
    package init(_ device: PCIDevice, bus: PCIBus) {
        func hex<T: BinaryInteger>(_ value: T, _ width: Int) -> String {
            let digits = String(value, radix: 16)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        address = device.address.description
        vendorId = hex(device.vendorID, 4)
        deviceId = hex(device.deviceID, 4)
        subsystemVendorId = hex(device.subsystemVendorID, 4)
        subsystemDeviceId = hex(device.subsystemID, 4)
        classCode = hex(device.classCode, 6)
        revision = hex(device.revision, 2)
        vendorName = device.vendorName
        deviceName = device.deviceName
        subsystemName = device.subsystemName
        className = device.className
        driver = device.driver
        driverOverride = device.driverOverride
        iommuGroup = device.iommuGroup
        iommuGroupPeers = device.iommuGroupPeers.map(\.description)
        numaNode = device.numaNode
        bars = device.bars.map {
            Bar(index: $0.index, space: $0.space.rawValue, start: "0x" + String($0.start, radix: 16),
                size: $0.size, is64Bit: $0.is64Bit, isPrefetchable: $0.isPrefetchable)
        }
        interrupts = device.interrupts
        capabilitiesReadable = device.capabilitiesReadable
        capabilities = device.capabilities.map {
            Capability(id: "0x" + hex($0.id, $0.isExtended ? 4 : 2), offset: "0x" + hex($0.offset, $0.isExtended ? 3 : 2),
                       name: $0.name, extended: $0.isExtended)
        }
        kernelUses = device.kernelUses.map(\.description)
        activeInKernel = device.isActiveInKernel
        userModeNode = bus.userModeNode(of: device)
        matchingDriver = DriverRegistry.samples.driver(for: PCIIdentity(device))?.driver.name
    }
}
