import ArgumentParser

@main
struct Modeless: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "modeless",
        abstract: "Find PCI devices, hand them to user-mode drivers, and give them back.",
        discussion: """
            Exit codes: \(ExitStatus.table)
            """,
        version: "0.1.0",
        subcommands: [List.self, Info.self, Bind.self, Unbind.self, Watch.self, Run.self, Bench.self, Serve.self, Devices.self, Consume.self, Export.self, Supervise.self, Status.self]
    )
}
