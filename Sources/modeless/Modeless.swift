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
        subcommands: [List.self, Info.self, Bind.self, Unbind.self, Watch.self, Run.self, Bench.self, Serve.self, Devices.self, Consume.self, Export.self, Supervise.self, Status.self]
            + [Drivers.self, Overrides.self]
    )

    /// Parses the command line and runs the command; a driver's `run` command first has the
    /// device it names checked against the driver's match table. `modeless bench …` runs
    /// `modeless-bench …` in this process's place, before any parsing, so that its help and
    /// errors are the benchmarks' own.
    static func main() {
        do {
            if let arguments = BenchForwarding.benchArguments(CommandLine.arguments) { try BenchForwarding.replaceProcess(with: arguments) }
            var command = try parseAsRoot()
            if let driverCommand = command as? any DriverCommand { try driverCommand.refuseUnsupportedDevice() }
            try command.run()
        } catch {
            exit(withError: error)
        }
    }
}
