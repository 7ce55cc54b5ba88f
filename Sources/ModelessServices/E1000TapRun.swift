import ModelessDevice
import ModelessDrivers
import ModelessRuntime
import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// `modeless run e1000 ADDR --tap NAME`: the e1000 driver serves the kernel's IP stack through a
/// TAP interface until SIGINT or SIGTERM, or until the NIC or the pump between them fails.
package struct E1000TapRun: HostedWork {
    /// What to run and how.
    package struct Configuration {
        /// The NIC as the person named it (an address or vendor:device id).
        package var device: String
        /// The TAP interface's name (created, or attached if it exists as a persistent TAP).
        package var tap: String
        /// When the command was entered (CLOCK_MONOTONIC, ns), for the ready line's timings.
        package var entered: UInt64
        /// Whether the TAP is made persistent (IFF_PERSIST) and kept when this process stops.
        package var persist = false
        /// An IPv4 address with prefix given to the TAP, unless it already has it.
        package var tapAddress: NetworkInterface.IPv4Address?
        /// The most frames sent to the NIC in one batch.
        package var batch = 32
        /// Descriptors per ring.
        package var ringSize = 256
        /// The supervised instance's name (`--container`), when `modeless supervise` runs this process.
        package var instance: String?
        /// The execution mode.
        package var mode: ExecutionMode = .user
        /// The interrupt kind; nil polls.
        package var interrupt: InterruptKind? = .intx
        /// The interrupts as the person named them, for the ready line.
        package var irqName = "intx"
        /// Whether DMA over UIO (no isolation) is allowed.
        package var allowUnisolatedDMA = false
        /// Whether the driver runs under the verifier.
        package var verify = false

        /// Whether this process is an instance of `modeless supervise`.
        package var supervised: Bool { instance != nil }

        /// Serving TAP `tap` with `device`, entered at `entered`, with the defaults.
        package init(device: String, tap: String, entered: UInt64) {
            self.device = device
            self.tap = tap
            self.entered = entered
        }
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
    package func run() throws {
        TerminationSignals.block()
        let tap: TapInterface
        let keepAcrossKills = configuration.persist || configuration.supervised
        do { tap = try TapInterface.open(configuration.tap, persistent: keepAcrossKills) } catch {
            printError(error.description)
            throw HostExit(Self.exitCode(error))
        }
        var forwarding = false
        defer { if forwarding { tap.close() } else { tap.abandon() } }
        let verifier = makeVerifier(configuration.verify)
        let opening = monotonicNanoseconds()
        try withBoundDevice(configuration.device, mode: configuration.mode, options: .init(allowUnisolatedDMA: configuration.allowUnisolatedDMA), verifier: verifier) { pci, access, runtime in
            let opened = monotonicNanoseconds()
            let driver = try E1000Driver(device: access, runtime: runtime, receive: configuration.interrupt.map { .interrupts($0) } ?? .pollingThread,
                                         ringSize: configuration.ringSize)
            defer { driver.stop() }
            let driverUp = monotonicNanoseconds()
            let pump = try E1000TapPump(driver: driver, tap: tap, batch: configuration.batch)
            defer { pump.stop() }
            let interface = NetworkInterface(configuration.tap)
            try interface.setHardwareAddress(driver.macAddress)
            try pump.start()
            try interface.setUp(true)
            if let address = configuration.tapAddress { try interface.setIPv4Address(address) }
            forwarding = true
            let serving = monotonicNanoseconds()
            let mac = driver.macAddress.map { String($0, radix: 16).leftPadded(to: 2) }.joined(separator: ":")
            let startup = TapStartup(entered: configuration.entered, opening: opening, opened: opened, driverUp: driverUp, serving: serving)
            // "serving " first: the line `modeless supervise` takes as the instance's readiness.
            printLine("serving TAP \(configuration.tap)\(tap.created ? " (created)" : " (attached)")\(tap.persistent ? ", persistent" : "")"
                      + "\(configuration.tapAddress.map { ", \($0)" } ?? "") with e1000 on \(access.backendName) \(pci), \(runtime.mode) mode, \(configuration.irqName): "
                      + "MAC \(mac)\(configuration.instance.map { ", instance \($0)" } ?? ""); pid \(getpid()); \(startup)")
            let linkDeadline = serving + TapStartup.linkWait
            while !driver.linkUp && driver.failure == nil && monotonicNanoseconds() < linkDeadline { usleep(1_000) }
            printLine(driver.linkUp ? "link up \(millisecondsText(monotonicNanoseconds() - serving)) ms after serving"
                                    : "link still down \(millisecondsText(TapStartup.linkWait)) ms after serving")
            let failure = Self.waitForSignal { pump.failure ?? driver.failure.map { "\($0)" } }
            if failure == nil && configuration.supervised && !configuration.persist {
                // The supervisor stops the service: its TAP goes with it.
                tap.remove()
            }
            let stats = pump.statistics
            printLine("frames:     \(stats.toKernel) to the kernel (\(stats.notTakenByKernel) not taken), \(stats.toNIC) to the NIC in \(stats.transmitBatches) batches (\(stats.droppedToNIC) dropped)")
            if let failure {
                printError("stopped forwarding: \(failure)")
                throw HostExit(1)
            }
        }
        try finishVerification(verifier)
    }

    /// Waits for SIGINT or SIGTERM (blocked by ``TerminationSignals/block()``), looking at
    /// `failure` every 200 ms; returns what it reported, or nil after a signal.
    package static func waitForSignal(_ failure: () -> String?) -> String? {
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
    package static func exitCode(_ error: TapError) -> Int32 {
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
package struct TapStartup: CustomStringConvertible {
    var entered: UInt64
    var opening: UInt64
    var opened: UInt64
    var driverUp: UInt64
    var serving: UInt64

    /// How long the driver waits for the NIC's link after serving before it says it is still down.
    package static let linkWait: UInt64 = 5_000_000_000

    /// The ready line's account of the start.
    package var description: String {
        "up in \(millisecondsText(serving - entered)) ms: TAP \(millisecondsText(opening - entered)) ms, device open \(millisecondsText(opened - opening)) ms, "
            + "driver start \(millisecondsText(driverUp - opened)) ms, pump and TAP up \(millisecondsText(serving - driverUp)) ms "
            + "(entered at monotonic \(millisecondsText(entered)) ms)"
    }
}
