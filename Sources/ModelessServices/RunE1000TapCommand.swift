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

    func validate() throws {
        if let tap {
            do { try TapInterface.validate(tap) } catch { throw ValidationError(error.description) }
        }
        if tap == nil && (persist || tapAddress != nil) { throw ValidationError("--persist and --tap-address go with --tap NAME") }
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
    func runTap(_ name: String) throws {
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
        do { tap = try TapInterface.open(name, persistent: tapOptions.persist) } catch {
            printError(error.description)
            throw ExitCode(Self.exitCode(error))
        }
        var forwarding = false
        defer { if forwarding { tap.close() } else { tap.abandon() } }
        let verifier = verification.makeVerifier()
        try withBoundDevice(device, mode: mode, options: .init(allowUnisolatedDMA: allowUnisolatedDMA), verifier: verifier) { pci, access, runtime in
            let driver = try E1000Driver(device: access, runtime: runtime, receive: interrupt.map { .interrupts($0) } ?? .pollingThread,
                                         ringSize: tapOptions.ringSize)
            defer { driver.stop() }
            let pump = try E1000TapPump(driver: driver, tap: tap, batch: tapOptions.tapBatch)
            defer { pump.stop() }
            let interface = NetworkInterface(name)
            try interface.setHardwareAddress(driver.macAddress)
            try pump.start()
            try interface.setUp(true)
            if let address { try interface.setIPv4Address(address) }
            forwarding = true
            let mac = driver.macAddress.map { String($0, radix: 16).leftPadded(to: 2) }.joined(separator: ":")
            // "serving " first: the line `modeless supervise` takes as the instance's readiness.
            printLine("serving TAP \(name)\(tap.created ? " (created)" : " (attached)")\(tap.persistent ? ", persistent" : "")"
                      + "\(address.map { ", \($0)" } ?? "") with e1000 on \(access.backendName) \(pci), \(runtime.mode) mode, \(irq): "
                      + "MAC \(mac); pid \(getpid())")
            let failure = Self.waitForSignal { pump.failure ?? driver.failure.map { "\($0)" } }
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
