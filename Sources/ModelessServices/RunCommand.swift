import ArgumentParser
import ModelessBus
import ModelessCommandLine
import ModelessDevice
import ModelessDrivers
import ModelessModels
import ModelessRuntime

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
        let verifier = verification.makeVerifier()
        try run(verifier: verifier)  // The driver stopped and the runtime shut down: every report is in.
        try verification.finish(verifier)
    }

    private func run(verifier: DriverVerifier?) throws {
        let access: any DeviceAccess
        do {
            if model {
                access = try ModeledDevice(EduModel(), dmaAddressBits: 28)
            } else {
                let bus = PCIBus()
                let selector: DeviceSelector
                let found: PCIDevice
                do {
                    selector = try DeviceSelector(parsing: device!)
                    found = try bus.resolve(selector)
                } catch { throw ExitStatus.fail(error) }
                access = try DeviceOpener.open(found.address, options: .init(dmaAddressBits: 28, allowUnisolatedDMA: allowUnisolatedDMA))
            }
        } catch let error as DeviceError {
            printError(error.description)
            throw ExitCode(1)
        }
        defer { access.close() }

        let traceRecords = trace || traceJSON != nil ? InterruptTrace() : nil
        let options = RuntimeOptions(interruptPriority: noRealtime ? nil : 50, dpcPriority: noRealtime ? nil : 40, trace: traceRecords,
                                     verifier: verifier)
        let runtime: any DriverRuntime
        do { runtime = try makeRuntime(mode, options: options) } catch {
            printError(error.description)
            throw ExitCode(1)
        }
        defer { runtime.shutdown() }
        printLine("edu on \(access.backendName) \(access.address), \(runtime.mode) mode, \(irq) interrupts")
        for refusal in runtime.refusals { printLine("  note: \(refusal) (running without it)") }
        do {
            let driver = try EduDriver(device: access, runtime: runtime, interrupt: irq)
            defer { driver.stop() }
            let report = try driver.selfTest()
            let counts = driver.interruptCounts
            // The trace is read once nothing runs any more: a DPC still running would leave
            // its span open. Both calls are repeated harmlessly by the defers.
            driver.stop()
            runtime.shutdown()
            printLine(report.description)
            printLine("ISR:            \(counts.isrCalls) calls for \(counts.interrupts) interrupts")
            if let traceRecords, trace { printLine("trace:\n" + traceRecords.render()) }
            if let traceRecords, let traceJSON { try TraceJSONFile.write(traceRecords, to: traceJSON) }
            guard report.alive, report.dmaMatches else { throw ExitCode(1) }
        } catch let exit as ExitCode {
            throw exit
        } catch where reportRemoval(error) {
            return
        } catch {
            printError("\(error)")
            throw ExitCode(1)
        }
    }
}
