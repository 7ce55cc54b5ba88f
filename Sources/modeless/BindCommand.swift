import ArgumentParser
import ModelessBus

extension UserModeDriver: ExpressibleByArgument {}

struct Bind: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Hand a device to a user-mode driver (vfio-pci or uio_pci_generic).",
        discussion: """
            Every check runs before anything changes; if the kernel refuses, the device keeps \
            the driver it had. The original driver is remembered for `modeless unbind`.
            """)

    @Argument(help: "The device: 0000:03:00.0, 03:00.0, or a vendor:device id such as 8086:100e.")
    var device: String

    @Option(help: "The user-mode driver: vfio-pci (IOMMU-isolated) or uio_pci_generic (no DMA isolation).")
    var to: UserModeDriver = .vfioPCI

    @Flag(help: "Bind even if the kernel is using the device (interface up, disk mounted).")
    var force = false

    @Flag(help: "Check and print what would be done, changing nothing.")
    var dryRun = false

    func run() throws {
        try reportingErrors { () throws(BusError) in
            let report = try PCIBinder().bind(try DeviceSelector(parsing: device), to: to, force: force, dryRun: dryRun)
            printReport(report, dryRun: dryRun, done: "bound to \(to.rawValue)", already: "on \(to.rawValue)")
        }
    }
}

struct Unbind: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Give a device back to the driver it had before `modeless bind`.")

    @Argument(help: "The device: 0000:03:00.0, 03:00.0, or a vendor:device id such as 8086:100e.")
    var device: String

    @Flag(help: "Check and print what would be done, changing nothing.")
    var dryRun = false

    @Flag(help: "If a Modeless driver holds the device through VFIO, ask it to release it (its remove routine fails its I/O and closes the device) and unbind once it has; without this, a held device is refused.")
    var release = false

    func run() throws {
        try reportingErrors { () throws(BusError) in
            let report = try PCIBinder().unbind(try DeviceSelector(parsing: device), releasing: release, dryRun: dryRun)
            let driver = report.device.driver ?? "no driver"
            printReport(report, dryRun: dryRun, done: "restored to \(driver)", already: "on \(driver)")
        }
    }
}

private func printReport(_ report: PCIBinder.Report, dryRun: Bool, done: String, already: String) {
    let address = report.device.address
    if report.alreadyDone {
        printLine("\(address): nothing to do, already \(already)"
                  + (report.node.map { " (\($0))" } ?? ""))
        return
    }
    if dryRun {
        printLine("\(address): would do:")
        report.steps.forEach { printLine("  \($0)") }
        return
    }
    printLine("\(address): \(done)" + (report.node.map { " (\($0))" } ?? ""))
}
