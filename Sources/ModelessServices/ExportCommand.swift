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
            exists; on SIGINT or SIGTERM removes it and exits. Exit codes: 64 bad arguments, 66 no such \
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

    package func validate() throws {
        if !ublk { throw ValidationError("say how to export: --ublk") }
    }

    package func run() throws {
        TerminationSignals.block()
        let configuration = UblkConfiguration(queues: queues, queueDepth: queueDepth, userRecovery: !noRecovery)
        let export: UblkExport
        let claim: ExportLock
        let container: LogicalContainer
        do {
            try configuration.validate()
            let name = try LogicalDeviceName(parsing: device, defaultContainer: "")
            try UblkExport.checkDriver()
            claim = try ExportLock(device: name)
            do {
                container = try LogicalContainer(name: "export-\(getpid())", serving: false)
            } catch {
                claim.release()
                throw UblkError(.system, "\(error)")
            }
            do {
                export = try UblkExport.start(LogicalBlockBackend(device: name.description, container: container), configuration: configuration)
            } catch {
                container.shutdown()
                claim.release()
                throw error
            }
        } catch let error as UblkError {
            printError(error.message)
            throw ExitCode(Self.exitCode(error.kind))
        } catch {
            printError("\(error)")
            throw ExitCode(64)
        }
        claim.record("as \(export.blockDevicePath) by process \(getpid())")
        let geometry = export.geometry
        printLine("exported \(device) as \(export.blockDevicePath) (\(geometry.blockCount) blocks of \(geometry.blockSize) bytes, "
                  + "\(export.queues) queue(s) of depth \(export.queueDepth), features \(export.features); pid \(getpid()))")
        TerminationSignals.wait()
        var status: Int32 = 0
        do { try export.stop() } catch {
            printError(error.message)
            status = 1
        }
        container.shutdown()
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
