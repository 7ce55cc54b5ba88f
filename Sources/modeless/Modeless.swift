import ArgumentParser
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
        subcommands: [List.self, Info.self, Bind.self, Unbind.self, Watch.self, Run.self, Bench.self, Serve.self, Devices.self, Consume.self, Supervise.self, Status.self]
    )
}
