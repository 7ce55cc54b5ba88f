import ModelessBus
import ModelessDevice
import ModelessDrivers
import ModelessRuntime
import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// Where hosted work (a driver run, a provider served, an export) reports to a person: each line
/// as it happens, and each failure. The command line passes its console; a test can collect.
package struct HostReport: Sendable {
    /// Takes a line of what happened (the command line prints it on standard output).
    package var line: @Sendable (String) -> Void
    /// Takes a failure's message (the command line prints it on standard error as `modeless: error: …`).
    package var error: @Sendable (String) -> Void

    /// A report that hands lines to `line` and failures to `error`.
    package init(line: @escaping @Sendable (String) -> Void, error: @escaping @Sendable (String) -> Void) {
        self.line = line
        self.error = error
    }
}

/// An error whose message was already reported: whoever catches it ends with its exit status
/// and prints nothing more. ``HostExit`` is one; the command line marks its own exit codes so.
package protocol ReportedFailure: Error {}

/// Hosted work ended, its failure already reported: the exit status the process ends with
/// (the documented codes of docs/cli.md; ``ExitStatus``).
package struct HostExit: ReportedFailure, Equatable {
    /// The process's exit status.
    package var status: Int32

    /// The end with exit status `status`.
    package init(_ status: Int32) { self.status = status }
}

/// A piece of hosted work with its report: the helpers every host shares (opening a bound
/// device, a removal's report, the verifier's verdict, an NVMe namespace's selection).
package protocol HostedWork {
    /// Where this work reports.
    var report: HostReport { get }
}

extension HostedWork {
    /// Reports one line.
    package func printLine(_ text: String) { report.line(text) }

    /// Reports a failure's message.
    package func printError(_ text: String) { report.error(text) }

    /// Reports a refusal of the bus and gives its documented exit status.
    package func fail(_ error: BusError) -> HostExit {
        report.error(error.description)
        return HostExit(ExitStatus.code(for: error.kind))
    }

    /// What every `run` and `serve` on a bound device does around its own work: resolve the
    /// device `text` names, open it with the backend its driver calls for, start a runtime in
    /// `mode`, run `body`, and release everything. A bad name ends with its documented code;
    /// the device's removal (the driver's remove routine or datapath found it gone) ends
    /// normally once the device is released; any other failure is reported and ends with 1.
    package func withBoundDevice(_ text: String, mode: ExecutionMode, options: DeviceOpener.Options = .init(), verifier: DriverVerifier? = nil,
                                 _ body: (PCIAddress, any DeviceAccess, any DriverRuntime) throws -> Void) throws {
        let address: PCIAddress
        do { address = try PCIBus().resolve(try DeviceSelector(parsing: text)).address } catch { throw fail(error) }
        try endingAsDevicesDo {
            let access = try DeviceOpener.open(address, options: options)
            defer { access.close() }
            let runtime = try makeRuntime(mode, options: RuntimeOptions(verifier: verifier))
            defer { runtime.shutdown() }
            try body(address, access, runtime)
        }
    }

    /// Runs `work` on a device and ends it as every host does: the device's removal ends
    /// normally (``reportRemoval(_:)``), a failure already reported passes through, and any
    /// other failure is reported and ends with 1.
    package func endingAsDevicesDo(_ work: () throws -> Void) throws {
        do {
            do {
                try work()
            } catch where reportRemoval(error) {
                return
            }
        } catch let reported as any ReportedFailure {
            throw reported
        } catch {
            report.error("\(error)")
            throw HostExit(1)
        }
    }

    /// Whether `error` says the device was removed (a requested or surprise removal, as the
    /// driver's remove routine or datapath saw it): then it reports what happened, and the work
    /// ends normally, having released the device, instead of failing.
    package func reportRemoval(_ error: any Error) -> Bool {
        guard let failure = error as? any DeviceRemovalReporting, failure.isDeviceRemoval else { return false }
        let what = "\(error)"
        report.line((what.hasPrefix("device removed") ? what : "device removed: " + what)
                    + "; the driver stopped and failed what was in flight; releasing the device")
        return true
    }

    /// The verifier to give the runtime when `verify` (each of its reports is reported as a failure when it happens).
    package func makeVerifier(_ verify: Bool) -> DriverVerifier? {
        let report = report
        return verify ? DriverVerifier(onReport: { report.error($0.description) }) : nil
    }

    /// Reports the verifier's verdict; ends with 1 when it reported anything.
    package func finishVerification(_ verifier: DriverVerifier?) throws(HostExit) {
        guard let verifier else { return }
        let count = verifier.reports.count
        guard count > 0 else {
            report.line("verifier: no reports")
            return
        }
        report.error("verifier: \(count) report\(count == 1 ? "" : "s") (rules: \(verifier.rulesReported.map(\.description).joined(separator: ", ")))")
        throw HostExit(1)
    }

    /// The namespace `identifier` names on `controller` (the first active one when nil); a
    /// namespace that is not active is reported with the active ones and ends with 64.
    package func selectNamespace(_ identifier: UInt32?, on controller: NVMeController) throws(HostExit) -> NVMeController.Namespace {
        do {
            return try controller.namespace(identifier)
        } catch {
            report.error("--namespace: \(error)")
            throw HostExit(64)
        }
    }

    /// Writes `trace` (replacing `path`) in Chrome's trace-event format and says where it went;
    /// ends with 1 if it cannot.
    package func writeTrace(_ trace: InterruptTrace, to path: String) throws(HostExit) {
        do {
            try FileAccess.replaceFile(path, with: Array(trace.chromeTraceJSON(processName: "modeless run").utf8), mode: 0o644)
        } catch {
            report.error("cannot write the trace to \(path): \(error)")
            throw HostExit(1)
        }
        report.line("trace:          \(trace.count) records written to \(path) (Chrome trace-event JSON: open in Perfetto or chrome://tracing)")
    }
}
