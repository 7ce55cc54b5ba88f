import ArgumentParser
import ModelessCommandLine
import ModelessDevice
import ModelessDrivers
import ModelessRuntime
import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

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
    /// Opens the TAP, starts the driver and the pump between them, gives the TAP the NIC's
    /// Ethernet address (so that the NIC's address filter takes the kernel's frames) and
    /// brings it up, then forwards until SIGINT or SIGTERM, or until the NIC or the pump fails
    /// (exit 1, for a supervisor to restart). A failure before forwarding deletes a TAP this
    /// run created, so a refused start leaves no interface behind.
    ///
    /// As a supervised instance (`--container`), the TAP is persistent while the service runs:
    /// a killed instance leaves it, with its addresses, routes and the connections over it, for
    /// the replacement to attach to; SIGINT or SIGTERM (the supervisor stopping the service)
    /// deletes it unless `--persist` asked to keep it.
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
        let address = tapOptions.tapAddress.flatMap(NetworkInterface.IPv4Address.init)
        TerminationSignals.block()
        let tap: TapInterface
        let keepAcrossKills = tapOptions.persist || tapOptions.supervised
        do { tap = try TapInterface.open(name, persistent: keepAcrossKills) } catch {
            printError(error.description)
            throw ExitCode(Self.exitCode(error))
        }
        var forwarding = false
        defer { if forwarding { tap.close() } else { tap.abandon() } }
        let verifier = verification.makeVerifier()
        let opening = monotonicNanoseconds()
        try withBoundDevice(device, mode: mode, options: .init(allowUnisolatedDMA: allowUnisolatedDMA), verifier: verifier) { pci, access, runtime in
            let opened = monotonicNanoseconds()
            let driver = try E1000Driver(device: access, runtime: runtime, receive: interrupt.map { .interrupts($0) } ?? .pollingThread,
                                         ringSize: tapOptions.ringSize)
            defer { driver.stop() }
            let driverUp = monotonicNanoseconds()
            let pump = try E1000TapPump(driver: driver, tap: tap, batch: tapOptions.tapBatch)
            defer { pump.stop() }
            let interface = NetworkInterface(name)
            try interface.setHardwareAddress(driver.macAddress)
            try pump.start()
            try interface.setUp(true)
            if let address { try interface.setIPv4Address(address) }
            forwarding = true
            let serving = monotonicNanoseconds()
            let mac = driver.macAddress.map { String($0, radix: 16).leftPadded(to: 2) }.joined(separator: ":")
            let startup = TapStartup(entered: entered, opening: opening, opened: opened, driverUp: driverUp, serving: serving)
            // "serving " first: the line `modeless supervise` takes as the instance's readiness.
            printLine("serving TAP \(name)\(tap.created ? " (created)" : " (attached)")\(tap.persistent ? ", persistent" : "")"
                      + "\(address.map { ", \($0)" } ?? "") with e1000 on \(access.backendName) \(pci), \(runtime.mode) mode, \(irq): "
                      + "MAC \(mac)\(tapOptions.container.map { ", instance \($0)" } ?? ""); pid \(getpid()); \(startup)")
            let linkDeadline = serving + TapStartup.linkWait
            while !driver.linkUp && driver.failure == nil && monotonicNanoseconds() < linkDeadline { usleep(1_000) }
            printLine(driver.linkUp ? "link up \(TapStartup.milliseconds(monotonicNanoseconds() - serving)) ms after serving"
                                    : "link still down \(TapStartup.milliseconds(TapStartup.linkWait)) ms after serving")
            let failure = Self.waitForSignal { pump.failure ?? driver.failure.map { "\($0)" } }
            if failure == nil && tapOptions.supervised && !tapOptions.persist {
                // The supervisor stops the service: its TAP goes with it.
                tap.remove()
            }
            let stats = pump.statistics
            printLine("frames:     \(stats.toKernel) to the kernel (\(stats.notTakenByKernel) not taken), \(stats.toNIC) to the NIC in \(stats.transmitBatches) batches (\(stats.droppedToNIC) dropped)")
            if let failure {
                printError("stopped forwarding: \(failure)")
                throw ExitCode(1)
            }
        }
        try verification.finish(verifier)
    }

    /// Waits for SIGINT or SIGTERM (blocked by ``TerminationSignals/block()``), looking at
    /// `failure` every 200 ms; returns what it reported, or nil after a signal.
    static func waitForSignal(_ failure: () -> String?) -> String? {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        var timeout = timespec(tv_sec: 0, tv_nsec: 200_000_000)
        while true {
            if sigtimedwait(&set, nil, &timeout) > 0 { return nil }
            if let failure = failure() { return failure }
        }
    }

    /// The documented exit code of a TAP refusal (docs/cli.md).
    static func exitCode(_ error: TapError) -> Int32 {
        switch error {
        case .invalidName, .notTap, .isTun: 64
        case .noCloneDevice: 69
        case .busy: 75
        case .notPermitted: 77
        case .system: 1
        }
    }
}

/// When each step of a TAP driver's start ended, on CLOCK_MONOTONIC, for the ready line: how
/// long opening the device (VFIO or UIO, the runtime), starting the driver (reset, EEPROM,
/// rings, interrupts) and bringing the TAP up took, and the time the command was entered,
/// so that whoever killed the previous instance can time the process's start.
struct TapStartup: CustomStringConvertible {
    var entered: UInt64
    var opening: UInt64
    var opened: UInt64
    var driverUp: UInt64
    var serving: UInt64

    /// How long the driver waits for the NIC's link after serving before it says it is still down.
    static let linkWait: UInt64 = 5_000_000_000

    static func milliseconds(_ nanoseconds: UInt64) -> String {
        let tenths = nanoseconds / 100_000
        return "\(tenths / 10).\(tenths % 10)"
    }

    var description: String {
        "up in \(Self.milliseconds(serving - entered)) ms: TAP \(Self.milliseconds(opening - entered)) ms, device open \(Self.milliseconds(opened - opening)) ms, "
            + "driver start \(Self.milliseconds(driverUp - opened)) ms, pump and TAP up \(Self.milliseconds(serving - driverUp)) ms "
            + "(entered at monotonic \(Self.milliseconds(entered)) ms)"
    }
}
