import ArgumentParser
import ModelessCommandLine
import ModelessLogical
import ModelessSystem
import ModelessUblk

#if canImport(Glibc)
import Glibc
#endif

/// `modeless export CONTAINER/DEVICE --ublk`: a logical block device served to the kernel as
/// `/dev/ublkbN` (docs/kernel-interfaces.md).
package struct Export: ParsableCommand {
    package static let configuration = CommandConfiguration(
        abstract: "Export a logical block device to the Linux kernel as a block device, until SIGINT or SIGTERM.",
        discussion: """
            With --ublk the device becomes /dev/ublkbN through the kernel's ublk driver (`modprobe ublk_drv`, \
            Linux 6.0 or later; needs root). Prints `exported DEVICE as /dev/ublkbN ...` once the block device \
            exists; on SIGINT or SIGTERM removes it and exits. With user recovery (the default), an export \
            killed while serving leaves /dev/ublkbN waiting, and the next export of the same device takes it \
            over (under `modeless supervise`, the replacement instance). Exit codes: 64 bad arguments, 66 no such \
            device, 69 ublk driver not loaded, 75 already exported, 76 the kernel refused, 77 not permitted.
            """)

    @Argument(help: "The logical block device, container/device (as `modeless devices` lists it).")
    var device: String

    @Flag(help: "Export through ublk (the only way so far).")
    var ublk = false

    @Option(help: "Queues (at most one per CPU is used).")
    var queues = SystemThread.cpuCount

    @Option(name: .customLong("queue-depth"), help: "Requests in flight per queue, 1-4096.")
    var queueDepth = 64

    @Flag(name: .customLong("no-recovery"), help: "Do not ask for UBLK_F_USER_RECOVERY: the device fails at once if this process dies.")
    var noRecovery = false

    @Option(help: ArgumentHelp(
        "Run as instance NAME of `modeless supervise` (which gives this option): NAME is the container this process's requests come from, and the ready line starts with `serving`, the line the supervisor waits for.",
        valueName: "NAME"))
    var container: String?

    package func validate() throws {
        if !ublk { throw ValidationError("say how to export: --ublk") }
        if let container {
            do { try LogicalDeviceName.validate(container, what: "container") } catch { throw ValidationError("--container \(container): \(error)") }
        }
    }

    package func run() throws {
        let entered = monotonicNanoseconds()
        TerminationSignals.block()
        let configuration = UblkConfiguration(queues: queues, queueDepth: queueDepth, userRecovery: !noRecovery)
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
            throw ExitCode(Self.exitCode(error.kind))
        } catch {
            printError("\(error)")
            throw ExitCode(64)
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
        if status != 0 { throw ExitCode(status) }
    }

    static func exitCode(_ kind: UblkError.Kind) -> Int32 {
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

    package init() {}
}
