import ModelessLogical
import ModelessSystem
import ModelessUblk

#if canImport(Glibc)
import Glibc
#endif

/// `modeless export CONTAINER/DEVICE --ublk`: a logical block device served to the kernel as
/// `/dev/ublkbN` (docs/kernel-interfaces.md) until SIGINT or SIGTERM. With user recovery, an
/// export killed while serving leaves the block device waiting, and the next export of the same
/// device takes it over.
package struct LogicalExport: HostedWork {
    /// The logical block device, container/device.
    package var device: String
    /// Queues (at most one per CPU is used).
    package var queues = SystemThread.cpuCount
    /// Requests in flight per queue, 1-4096.
    package var queueDepth = 64
    /// Whether to ask for UBLK_F_USER_RECOVERY.
    package var recovery = true
    /// The supervised instance's name: the container this process's requests come from, and
    /// the ready line starts with `serving`; nil for a plain export.
    package var container: String?
    /// When the command was entered (CLOCK_MONOTONIC, ns), for a recovery's timing.
    package var entered: UInt64
    /// Where the export reports.
    package var report: HostReport

    /// The export of `device`, entered at `entered`, reporting to `report`.
    package init(device: String, entered: UInt64, report: HostReport) {
        self.device = device
        self.entered = entered
        self.report = report
    }

    /// Exports the device, reports the ready line, serves until SIGINT or SIGTERM, then removes
    /// the block device. A refusal ends with its documented code (``exitCode(_:)``).
    package func run() throws {
        TerminationSignals.block()
        let configuration = UblkConfiguration(queues: queues, queueDepth: queueDepth, userRecovery: recovery)
        let export: UblkExport
        let origin: RecoverableExport.Origin
        let claim: ExportLock
        let consumer: LogicalContainer
        do {
            try configuration.validate()
            let name = try LogicalDeviceName(parsing: device, defaultContainer: "")
            try UblkExport.checkDriver()
            claim = try ExportLock(device: name)
            // Until a clean stop empties it, the claim's record names the ublk device, for a
            // replacement to recover: a start that fails keeps its predecessor's.
            do {
                consumer = try LogicalContainer(name: container ?? "export-\(getpid())", serving: false)
            } catch {
                claim.release(keepingRecord: true)
                throw UblkError(.system, "\(error)")
            }
            do {
                (export, origin) = try RecoverableExport.startOrRecover(
                    LogicalBlockBackend(device: name.description, container: consumer), claim: claim, configuration: configuration)
            } catch {
                consumer.shutdown()
                claim.release(keepingRecord: true)
                throw error
            }
        } catch let error as UblkError {
            printError(error.message)
            throw HostExit(Self.exitCode(error.kind))
        } catch {
            printError("\(error)")
            throw HostExit(64)
        }
        if export.features.contains(.userRecovery) {
            // A failure only makes a recovery slower: said, not fatal.
            do { try RecoverableExport.shortenRequestTimeout(of: export) } catch { printError("warning: \(error.message)") }
        }
        let geometry = export.geometry
        let how: String
        switch origin {
        case .added: how = ""
        case .recovered(let state):
            let tenths = (monotonicNanoseconds() - entered) / 100_000
            how = "recovered from state \(state) \(tenths / 10).\(tenths % 10) ms after entering (at monotonic \(entered / 1_000_000) ms), "
        }
        // Under `modeless supervise` the line starts with "serving ", the instance's readiness.
        printLine("\(container == nil ? "exported" : "serving") \(device) as \(export.blockDevicePath) (\(how)\(geometry.blockCount) blocks of \(geometry.blockSize) bytes, "
                  + "\(export.queues) queue(s) of depth \(export.queueDepth), features \(export.features); pid \(getpid()))")
        TerminationSignals.wait()
        var status: Int32 = 0
        do { try export.stop() } catch {
            printError(error.message)
            status = 1
        }
        consumer.shutdown()
        claim.release()
        let failed = export.failedRequests
        printLine("stopped \(export.blockDevicePath); \(failed.count) request(s) failed\(failed.last.map { " (last: \($0))" } ?? "")")
        if status != 0 { throw HostExit(status) }
    }

    /// The documented exit code of a ublk refusal of `kind` (docs/cli.md).
    package static func exitCode(_ kind: UblkError.Kind) -> Int32 {
        switch kind {
        case .invalidArgument: 64
        case .noSuchDevice: 66
        case .driverUnavailable: 69
        case .alreadyExported: 75
        case .kernelRefused: 76
        case .notPermitted: 77
        case .system: 1
        }
    }
}
