import ModelessBus
import ModelessDevice
import ModelessDrivers
import ModelessModels
import ModelessRuntime

/// `modeless run edu`: the edu driver's self-test (identification, factorials and interrupts, a
/// DMA round trip) on a device bound to a user-mode driver, or on the edu model, in either
/// execution mode.
package struct EduRun: HostedWork {
    /// What to run and how.
    package struct Configuration {
        /// The edu device as the person named it (an address or vendor:device id); nil runs on the model.
        package var device: String?
        /// The execution mode.
        package var mode: ExecutionMode = .user
        /// The interrupt kind.
        package var interrupt: InterruptKind = .msi
        /// Whether the trace's text is printed at the end.
        package var printTrace = false
        /// Where the trace is written in Chrome's trace-event format, if anywhere.
        package var traceJSON: String?
        /// Whether DMA over UIO (no isolation) is allowed.
        package var allowUnisolatedDMA = false
        /// Whether to ask for real-time priorities.
        package var realtime = true
        /// Whether the driver runs under the verifier.
        package var verify = false

        /// The self-test on `device` (nil: on the model), with the defaults.
        package init(device: String?) { self.device = device }
    }

    /// What to run.
    package var configuration: Configuration
    /// Where the run reports.
    package var report: HostReport

    /// The run of `configuration`, reporting to `report`.
    package init(_ configuration: Configuration, report: HostReport) {
        self.configuration = configuration
        self.report = report
    }

    /// Runs the self-test and reports it; ends with 1 when the device is not alive, the DMA
    /// round trip differs or the verifier reported anything.
    package func run() throws {
        let verifier = makeVerifier(configuration.verify)
        try run(verifier: verifier)  // The driver stopped and the runtime shut down: every report is in.
        try finishVerification(verifier)
    }

    private func run(verifier: DriverVerifier?) throws {
        let access: any DeviceAccess
        do {
            if let device = configuration.device {
                let bus = PCIBus()
                let selector: DeviceSelector
                let found: PCIDevice
                do {
                    selector = try DeviceSelector(parsing: device)
                    found = try bus.resolve(selector)
                } catch { throw fail(error) }
                access = try DeviceOpener.open(found.address, options: .init(dmaAddressBits: 28, allowUnisolatedDMA: configuration.allowUnisolatedDMA))
            } else {
                access = try ModeledDevice(EduModel(), dmaAddressBits: 28)
            }
        } catch let error as DeviceError {
            printError(error.description)
            throw HostExit(1)
        }
        defer { access.close() }

        let realtime = configuration.realtime
        let traceRecords = configuration.printTrace || configuration.traceJSON != nil ? InterruptTrace() : nil
        let options = RuntimeOptions(interruptPriority: realtime ? 50 : nil, dpcPriority: realtime ? 40 : nil, trace: traceRecords,
                                     verifier: verifier)
        let runtime: any DriverRuntime
        do { runtime = try makeRuntime(configuration.mode, options: options) } catch {
            printError(error.description)
            throw HostExit(1)
        }
        defer { runtime.shutdown() }
        printLine("edu on \(access.backendName) \(access.address), \(runtime.mode) mode, \(configuration.interrupt) interrupts")
        for refusal in runtime.refusals { printLine("  note: \(refusal) (running without it)") }
        do {
            let driver = try EduDriver(device: access, runtime: runtime, interrupt: configuration.interrupt)
            defer { driver.stop() }
            let report = try driver.selfTest()
            let counts = driver.interruptCounts
            // The trace is read once nothing runs any more: a DPC still running would leave
            // its span open. Both calls are repeated harmlessly by the defers.
            driver.stop()
            runtime.shutdown()
            printLine(report.description)
            printLine("ISR:            \(counts.isrCalls) calls for \(counts.interrupts) interrupts")
            if let traceRecords, configuration.printTrace { printLine("trace:\n" + traceRecords.render()) }
            if let traceRecords, let traceJSON = configuration.traceJSON { try writeTrace(traceRecords, to: traceJSON) }
            guard report.alive, report.dmaMatches else { throw HostExit(1) }
        } catch let exit as HostExit {
            throw exit
        } catch where reportRemoval(error) {
            return
        } catch {
            printError("\(error)")
            throw HostExit(1)
        }
    }
}
