import ArgumentParser
import ModelessDevice
import ModelessRuntime
import ModelessServices
import ModelessSystem

/// `modeless run e1000 ADDR --tap NAME`: the options of the TAP mode.
struct TapOptions: ParsableArguments {
    @Option(help: "Serve the kernel's IP stack through TAP interface NAME (created, or attached if it exists as a persistent TAP) until SIGINT or SIGTERM.")
    var tap: String?

    @Flag(help: "With --tap: make the TAP persistent (IFF_PERSIST), so that it, its addresses and the connections over it outlive this process; delete it with `ip link del NAME`.")
    var persist = false

    @Option(name: .customLong("tap-address"), help: "With --tap: an IPv4 address with prefix for the TAP (e.g. 10.0.0.2/24), set unless it already has it.")
    var tapAddress: String?

    @Option(name: .customLong("tap-batch"), help: "With --tap: the most frames sent to the NIC in one batch.")
    var tapBatch = 32

    @Option(name: .customLong("ring-size"), help: "With --tap: descriptors per ring (a multiple of 8, 8 to 4096).")
    var ringSize = 256

    @Option(help: ArgumentHelp(
        "With --tap: run as instance NAME of `modeless supervise` (which gives this option): the TAP is made persistent so that it outlives a kill of this process and the next instance attaches to it, and is deleted when this process is stopped with SIGINT or SIGTERM (unless --persist).",
        valueName: "NAME"))
    var container: String?

    /// Whether this process is an instance of `modeless supervise`.
    var supervised: Bool { container != nil }

    func validate() throws {
        if let tap {
            do { try TapInterface.validate(tap) } catch { throw ValidationError(error.description) }
        }
        if tap == nil && (persist || tapAddress != nil) { throw ValidationError("--persist and --tap-address go with --tap NAME") }
        if tap == nil && container != nil {
            throw ValidationError("--container names a supervised instance, and only the TAP mode (--tap NAME) runs under `modeless supervise`: the ping responder (--ip) stops by itself")
        }
        if let container, container.isEmpty { throw ValidationError("--container needs the instance's name") }
        if let tapAddress, NetworkInterface.IPv4Address(tapAddress) == nil {
            throw ValidationError("--tap-address \(tapAddress) is not an IPv4 address with prefix, e.g. 10.0.0.2/24")
        }
    }
}

extension RunE1000 {
    /// Serves the kernel through TAP interface `name` (``E1000TapRun``) until SIGINT or SIGTERM.
    func runTap(_ name: String) throws {
        let entered = monotonicNanoseconds()
        if ip != nil || peer != nil { throw ValidationError("--ip and --peer are for the ping responder; with --tap the kernel's IP stack answers") }
        let interrupt: InterruptKind?
        switch irq {
        case "msi": interrupt = .msi
        case "intx": interrupt = .intx
        case "poll": interrupt = nil
        default: throw ValidationError("--irq must be msi, intx or poll, not \(irq)")
        }
        var configuration = E1000TapRun.Configuration(device: device, tap: name, entered: entered)
        configuration.persist = tapOptions.persist
        configuration.tapAddress = tapOptions.tapAddress.flatMap(NetworkInterface.IPv4Address.init)
        configuration.batch = tapOptions.tapBatch
        configuration.ringSize = tapOptions.ringSize
        configuration.instance = tapOptions.container
        configuration.mode = mode
        configuration.interrupt = interrupt
        configuration.irqName = irq
        configuration.allowUnisolatedDMA = allowUnisolatedDMA
        configuration.verify = verification.verify
        try hosting { try E1000TapRun(configuration, report: .console).run() }
    }
}
