import ModelessBus
import ModelessDrivers
import ModelessSystem

extension PCIIdentity {
    /// The ids of a function found on the bus.
    package init(_ device: PCIDevice) {
        self.init(vendor: device.vendorID, device: device.deviceID, subsystemVendor: device.subsystemVendorID,
                  subsystemDevice: device.subsystemID, classCode: device.classCode)
    }

    /// The ids of the function `selector` names, from the kernel's copies in sysfs (`vendor`,
    /// `device`, `subsystem_vendor`, `subsystem_device`, `class`): no configuration-space read
    /// reaches the device, and libpci's name database, which ``PCIBus`` opens, is not needed.
    /// Errors are those of ``PCIBus/resolve(_:)``, with the same kinds and messages.
    package static func named(by selector: DeviceSelector, in devices: String = "/sys/bus/pci/devices") throws(BusError) -> (PCIAddress, PCIIdentity) {
        func identity(at address: PCIAddress) -> PCIIdentity? {
            func number(_ attribute: String) -> UInt32? {
                FileAccess.readTextIfPresent("\(devices)/\(address)/\(attribute)").flatMap { UInt32($0.dropFirst(2), radix: 16) }
            }
            guard let vendor = number("vendor"), let device = number("device") else { return nil }
            return PCIIdentity(vendor: UInt16(truncatingIfNeeded: vendor), device: UInt16(truncatingIfNeeded: device),
                               subsystemVendor: UInt16(truncatingIfNeeded: number("subsystem_vendor") ?? 0),
                               subsystemDevice: UInt16(truncatingIfNeeded: number("subsystem_device") ?? 0),
                               classCode: number("class") ?? 0)
        }
        switch selector {
        case .address(let address):
            guard let found = identity(at: address) else {
                throw BusError(.noSuchDevice, "no PCI device at \(address)", remedy: "`modeless list` shows the devices present")
            }
            return (address, found)
        case .ids(let vendor, let device):
            let addresses: [PCIAddress]
            do { addresses = try FileAccess.listDirectory(devices).compactMap(PCIAddress.init).sorted() } catch {
                throw BusError(.systemFailure, "cannot list PCI devices: \(error)", remedy: "check that sysfs is mounted at /sys")
            }
            let matches = addresses.compactMap { address in identity(at: address).map { (address, $0) } }
                .filter { $0.1.vendor == vendor && $0.1.device == device }
            if matches.count == 1 { return matches[0] }
            if matches.isEmpty {
                throw BusError(.noSuchDevice, "no PCI device has id \(selector)",
                               remedy: "`modeless list` shows the devices present and their ids")
            }
            throw BusError(.ambiguousDevice, "\(matches.count) PCI devices have id \(selector): \(matches.map(\.0.description).joined(separator: ", "))",
                           remedy: "name one of them by its address")
        case .kernelName(let name):
            let address = try PCIBus().device(withKernelName: name).address
            guard let found = identity(at: address) else {
                throw BusError(.noSuchDevice, "no PCI device at \(address)", remedy: "`modeless list` shows the devices present")
            }
            return (address, found)
        }
    }
}
