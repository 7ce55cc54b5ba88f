import ArgumentParser
import ModelessCommandLine
import ModelessServices
import ModelessSystem

@main
struct Modeless: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "modeless",
        abstract: "Find PCI devices, hand them to user-mode drivers, and give them back.",
        discussion: """
            Exit codes: \(ExitStatus.table)
            """,
        version: ModelessVersion.current,
        subcommands: [List.self, Info.self, Bind.self, Unbind.self, Watch.self, Run.self, Serve.self, Devices.self, Consume.self, Export.self, Supervise.self, Status.self]
            + [Drivers.self, Overrides.self]
    )

    /// Parses the command line and runs the command; a driver's `run` command first has the
    /// device it names checked against the driver's match table.
    static func main() {
        do {
            var command = try parseAsRoot()
            if let driverCommand = command as? any DriverCommand { try driverCommand.refuseUnsupportedDevice() }
            try command.run()
        } catch {
            exit(withError: error)
        }
    }
}
