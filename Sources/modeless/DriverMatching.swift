import ArgumentParser
import ModelessBus
import ModelessDrivers

/// A `run` command of one sample driver: the framework checks the device it names against the
/// driver's match table before the command opens or touches it.
protocol DriverCommand: ParsableCommand {
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
    /// The ids of a function found on the bus (read from sysfs: the device is not touched).
    init(_ device: PCIDevice) {
        self.init(vendor: device.vendorID, device: device.deviceID, subsystemVendor: device.subsystemVendorID,
                  subsystemDevice: device.subsystemID, classCode: device.classCode)
    }
}

extension DriverCommand {
    /// Refuses, with exit code 68, a device outside the driver's table, naming the ids the
    /// driver supports and the device's; a name that finds no device exits with its own code.
    func refuseUnsupportedDevice(registry: DriverRegistry = .samples) throws(ExitCode) {
        guard let namedDevice else { return }
        let found: PCIDevice
        do { found = try PCIBus().resolve(try DeviceSelector(parsing: namedDevice)) } catch { throw ExitStatus.fail(error) }
        if let mismatch = registry.refusal(of: Self.driver, at: found.address.description, PCIIdentity(found)) {
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
        let found: PCIDevice
        do { found = try PCIBus().resolve(try DeviceSelector(parsing: device)) } catch { throw ExitStatus.fail(error) }
        let identity = PCIIdentity(found)
        guard let (driver, entry) = DriverRegistry.samples.driver(for: identity) else {
            printError("no sample driver supports \(found.address) \(identity)\n  hint: `modeless drivers` lists the ids each driver supports")
            throw ExitCode(ExitStatus.unsupportedDevice)
        }
        printLine("driver: \(driver.name) for \(found.address) [\(found.ids)], matching \(entry)\(entry.name.map { " (\($0))" } ?? "")")
        var command = try Modeless.parseAsRoot(["run", driver.name, device] + arguments)
        try command.run()
    }
}
