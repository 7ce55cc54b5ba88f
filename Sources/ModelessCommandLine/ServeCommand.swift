import ArgumentParser
import ModelessDrivers
import ModelessLogical
import ModelessRuntime
import ModelessServices

/// `modeless serve`: this process becomes a container providing a logical device (a memory disk,
/// a partition, the NVMe driver per namespace or through ublk, the e1000 block gateway) until
/// SIGINT or SIGTERM; `modeless supervise` runs these as service instances.
package struct Serve: ParsableCommand {
    package static let configuration = CommandConfiguration(
        abstract: "Provide a logical device from this process until SIGINT or SIGTERM.",
        discussion: """
            The process becomes container --container (default: the provider's own name); consumers \
            anywhere open CONTAINER/DEVICE. `modeless devices` lists what is served.
            """,
        subcommands: [ServeMemoryDisk.self, ServePartition.self, ServeNVMe.self, ServeBlockGateway.self, ServeBenchPeer.self])

    package init() {}
}

/// The options every `serve` command shares.
struct ServeOptions: ParsableArguments {
    @Option(help: "The container (process namespace) to serve from.")
    var container: String?

    @Option(help: "The device's name in the container (default: blk0, or the provider's own).")
    var device: String?

    @Flag(help: "Serve from the kernel emulation's container, `kernel`, instead of a user container.")
    var kernel = false

    @OptionGroup var transport: TransportOptions

    /// The host these options describe, reporting on the console.
    var host: ProviderHost {
        var configuration = ProviderHost.Configuration()
        configuration.container = container
        configuration.device = device
        configuration.kernel = kernel
        configuration.transport = transport.requestTransport
        return ProviderHost(configuration, report: .console)
    }

    /// Serves the device `makeHandlers` makes until a termination signal (``ProviderHost``).
    func serve(defaultContainer: String, defaultDevice: String = "blk0", _ makeHandlers: (LogicalContainer) throws -> LogicalDeviceHandlers) throws {
        try hosting { try host.serve(defaultContainer: defaultContainer, defaultDevice: defaultDevice, makeHandlers) }
    }
}

struct ServeMemoryDisk: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "memory-disk", abstract: "A block device in memory.")

    @OptionGroup var options: ServeOptions

    @Option(help: "Blocks.")
    var blocks: UInt64 = 2048

    @Option(name: .customLong("block-size"), help: "Bytes per block.")
    var blockSize = 512

    @Option(name: .customLong("delay-ms"), help: "Milliseconds each request takes (to keep requests in flight).")
    var delayMs = 0

    func run() throws {
        let disk = MemoryDiskProvider(blockCount: blocks, blockSize: blockSize, delayNanoseconds: UInt64(delayMs) * 1_000_000)
        try options.serve(defaultContainer: "memory") { _ in disk.handlers }
    }
}

struct ServePartition: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "partition", abstract: "A block service consuming another block device: a window of its blocks.")

    @OptionGroup var options: ServeOptions

    @Option(help: "The block device below, container/device.")
    var of: String

    @Option(help: "The window's first block on the device below.")
    var first: UInt64 = 0

    @Option(help: "The window's size in blocks (default: to the end).")
    var blocks: UInt64?

    func run() throws {
        try options.serve(defaultContainer: "partition") { container in
            try PartitionProvider(container: container, lower: of, firstBlock: first, blockCount: blocks).handlers
        }
    }
}

struct ServeNVMe: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nvme", abstract: "The NVMe driver as the provider of a logical block device per namespace.",
        discussion: """
            The controller must be bound to vfio-pci (`modeless bind ADDR`). Every active namespace is served: \
            the first as --device (default blk0), namespace N after it as DEVICE-nN (e.g. blk0-n2); with \
            --namespace N only namespace N, as --device. With --model FILE the driver runs on the NVMe device \
            model instead, its namespace kept in FILE so that it outlives the process.
            """)

    @OptionGroup var options: ServeOptions

    @OptionGroup var namespaceOption: NVMeNamespaceOption

    @Argument(help: "The NVMe controller: 0000:00:06.0, 00:06.0 or 1b36:0010. Omit with --model.")
    var address: String?

    @Option(help: "Run on the NVMe device model, its namespace in this file (created if missing).")
    var model: String?

    @Option(name: .customLong("model-blocks"), help: "The model's namespace size in 512-byte blocks.")
    var modelBlocks = 8192

    @Option(help: "Execution mode: user or kernel-emulation.")
    var mode: ExecutionMode = .user

    @Option(help: "How completions are noticed: msix, msi, intx or poll.")
    var irq: NVMeController.Completion = .msix

    @Flag(help: "Serve the namespace to the kernel as /dev/ublkbN (modprobe ublk_drv; root) instead of as a logical device.")
    var ublk = false

    @Option(name: .customLong("ublk-queues"), help: "With --ublk: ublk queues (at most one per CPU is used).")
    var ublkQueues: Int?

    @Option(name: .customLong("queue-depth"), help: "With --ublk: requests in flight per queue (default: 128, or what the controller's I/O queue gives when less).")
    var queueDepth: Int?

    @Flag(name: .customLong("no-recovery"), help: "With --ublk: no user recovery (the device fails at once if this process dies).")
    var noRecovery = false

    func validate() throws {
        if (model == nil) == (address == nil) { throw ValidationError("name an NVMe controller, or pass --model FILE (not both)") }
    }

    func run() throws {
        var serving = NVMeServing(address: address, model: model, host: options.host)
        serving.modelBlocks = modelBlocks
        serving.namespace = namespaceOption.namespace
        serving.mode = mode
        serving.irq = irq
        if ublk { serving.ublk = (ublkQueues, queueDepth, !noRecovery) }
        try hosting { try serving.run() }
    }
}
