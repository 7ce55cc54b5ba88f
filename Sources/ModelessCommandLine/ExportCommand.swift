import ArgumentParser
import ModelessLogical
import ModelessServices
import ModelessSystem

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
        var export = LogicalExport(device: device, entered: entered, report: .console)
        export.queues = queues
        export.queueDepth = queueDepth
        export.recovery = !noRecovery
        export.container = container
        try hosting { try export.run() }
    }

    package init() {}
}
