import ArgumentParser
import ModelessBus
import ModelessCommandLine
import ModelessDrivers
import ModelessSystem

/// A `run` command of one sample driver: the framework checks the device it names against the
/// driver's match table before the command opens or touches it.
package protocol DriverCommand: ParsableCommand {
    static var driver: DriverIdentity { get }
    /// The device the person named, or nil when the command runs on a model.
    var namedDevice: String? { get }
}

extension RunEdu: DriverCommand {
    static var driver: DriverIdentity { .edu }
    var namedDevice: String? { device }
}

extension RunE1000: DriverCommand {
    static var driver: DriverIdentity { .e1000 }
    var namedDevice: String? { device }
}

extension RunNVMe: DriverCommand {
    static var driver: DriverIdentity { .nvme }
    var namedDevice: String? { device }
}

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
    static func named(by selector: DeviceSelector, in devices: String = "/sys/bus/pci/devices") throws(BusError) -> (PCIAddress, PCIIdentity) {
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

extension DriverCommand {
    /// Refuses, with exit code 68, a device outside the driver's table, naming the ids the
    /// driver supports and the device's; a name that finds no device exits with its own code.
    package func refuseUnsupportedDevice(registry: DriverRegistry = .samples) throws(ExitCode) {
        guard let namedDevice else { return }
        let address: PCIAddress, identity: PCIIdentity
        do { (address, identity) = try PCIIdentity.named(by: try DeviceSelector(parsing: namedDevice)) } catch { throw ExitStatus.fail(error) }
        if let mismatch = registry.refusal(of: Self.driver, at: address.description, identity) {
            printError("\(mismatch)\n  hint: \(mismatch.remedy)")
            throw ExitCode(ExitStatus.unsupportedDevice)
        }
    }
}

/// `modeless run ADDR [ARGS...]`: the driver whose table takes the device runs it, with ARGS.
struct RunMatching: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "matching",
        abstract: "Run the sample driver whose match table takes the device (`modeless run ADDR [ARGS...]`).",
        discussion: "ARGS go to that driver's command: `modeless run 00:04.0 --ip 10.0.0.2` runs `modeless run e1000 00:04.0 --ip 10.0.0.2`.",
        shouldDisplay: false)

    @Argument(help: "The device: 0000:00:03.0, 00:03.0 or a vendor:device id.")
    var device: String

    @Argument(parsing: .captureForPassthrough, help: "Arguments for the chosen driver's command.")
    var arguments: [String] = []

    func run() throws {
        let address: PCIAddress, identity: PCIIdentity
        do { (address, identity) = try PCIIdentity.named(by: try DeviceSelector(parsing: device)) } catch { throw ExitStatus.fail(error) }
        guard let (driver, entry) = DriverRegistry.samples.driver(for: identity) else {
            printError("no sample driver supports \(address) \(identity)\n  hint: `modeless drivers` lists the ids each driver supports")
            throw ExitCode(ExitStatus.unsupportedDevice)
        }
        let ids = "\(String(identity.vendor, radix: 16).leftPadded(to: 4)):\(String(identity.device, radix: 16).leftPadded(to: 4))"
        printLine("driver: \(driver.name) for \(address) [\(ids)], matching \(entry)\(entry.name.map { " (\($0))" } ?? "")")
        var command = try Run.parseAsRoot([driver.name, device] + arguments)
        try command.run()
    }
}
