import ArgumentParser
import ModelessBus
import ModelessDrivers
import ModelessServices

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
