import ArgumentParser
import ModelessDevice
import ModelessRuntime
import ModelessServices

extension ExecutionMode: ExpressibleByArgument {}
extension InterruptKind: ExpressibleByArgument {}

/// `modeless run`: a sample driver on a device bound to a user-mode driver, or on its model, in
/// either execution mode (`run edu|nvme|e1000`, or `run ADDR` for the driver whose table takes it).
package struct Run: ParsableCommand {
    package static let configuration = CommandConfiguration(
        abstract: "Run a sample driver on a bound device or on its model.",
        discussion: """
            `modeless run ADDR [ARGS...]` runs the driver whose match table takes the device \
            (`modeless drivers` lists the tables); `modeless run DRIVER ADDR` refuses a device \
            outside DRIVER's table with exit code 68 before opening it.
            """,
        subcommands: [RunEdu.self, RunNVMe.self, RunE1000.self, RunMatching.self],
        defaultSubcommand: RunMatching.self)

    package init() {}
}

struct RunEdu: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "edu",
        abstract: "Run the edu driver's self-test: identification, factorials and interrupts, a DMA round trip.",
        discussion: "The device must be bound to vfio-pci or uio_pci_generic (`modeless bind ADDR`); --model runs it against the edu model instead.")

    @Argument(help: "The edu device: 0000:00:03.0, 00:03.0 or 1234:11e8. Omit with --model.")
    var device: String?

    @Flag(help: "Run against the edu device model in this process instead of a device.")
    var model = false

    @Option(help: "Execution mode: user or kernel-emulation.")
    var mode: ExecutionMode = .user

    @Option(help: "Interrupt type: msi or intx (UIO offers only intx).")
    var irq: InterruptKind = .msi

    @Flag(help: "Record and print every interrupt's stages.")
    var trace = false

    @Option(name: .customLong("trace-json"), help: ArgumentHelp(
        "Record every interrupt's stages and write them to FILE in Chrome's trace-event format (opens in Perfetto or chrome://tracing).",
        valueName: "FILE"))
    var traceJSON: String?

    @Flag(help: "Allow DMA over UIO, which gives the device no DMA isolation (it can write any memory).")
    var allowUnisolatedDMA = false

    @Flag(help: "Do not ask for real-time (SCHED_FIFO) priorities.")
    var noRealtime = false

    @OptionGroup var verification: VerifyOption

    func validate() throws {
        if model == (device != nil) {
            throw ValidationError("name an edu device, or pass --model (not both)")
        }
        if let traceJSON { try TraceJSONFile.validate(traceJSON) }
    }

    func run() throws {
        var configuration = EduRun.Configuration(device: device)
        configuration.mode = mode
        configuration.interrupt = irq
        configuration.printTrace = trace
        configuration.traceJSON = traceJSON
        configuration.allowUnisolatedDMA = allowUnisolatedDMA
        configuration.realtime = !noRealtime
        configuration.verify = verification.verify
        try hosting { try EduRun(configuration, report: .console).run() }
    }
}
