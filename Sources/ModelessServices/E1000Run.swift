import ModelessDevice
import ModelessDrivers
import ModelessRuntime
import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// `modeless run e1000 ADDR --ip ADDRESS`: the e1000 driver answers ARP and ping on an address,
/// optionally pings a peer, for a number of seconds, and reports what it answered.
package struct E1000Run: HostedWork {
    /// What to run and how.
    package struct Configuration {
        /// The NIC as the person named it (an address or vendor:device id).
        package var device: String
        /// The IPv4 address answered on, as given.
        package var addressText: String
        /// Its four bytes.
        package var address: [UInt8]
        /// A peer to ping after resolving it with ARP: its address as given and its bytes.
        package var peer: (text: String, address: [UInt8])?
        /// Echo requests sent to the peer.
        package var count = 3
        /// Seconds to keep answering.
        package var seconds = 10.0
        /// The execution mode.
        package var mode: ExecutionMode = .user
        /// The interrupt kind; nil polls.
        package var interrupt: InterruptKind? = .intx
        /// With MSI-X, a vector per cause or one for all.
        package var msixVectors = E1000Driver.MSIXVectors.perCause
        /// Whether DMA over UIO (no isolation) is allowed.
        package var allowUnisolatedDMA = false
        /// Whether the driver runs under the verifier.
        package var verify = false

        /// Answering on `addressText` (`address`, its bytes) with `device`, with the defaults.
        package init(device: String, addressText: String, address: [UInt8]) {
            self.device = device
            self.addressText = addressText
            self.address = address
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

    /// Answers until the time is up (or the NIC is removed); ends with 1 when a ping went unanswered.
    package func run() throws {
        let verifier = makeVerifier(configuration.verify)
        try withBoundDevice(configuration.device, mode: configuration.mode, options: .init(allowUnisolatedDMA: configuration.allowUnisolatedDMA), verifier: verifier) { pci, access, runtime in
            let driver = try E1000Driver(device: access, runtime: runtime, receive: configuration.interrupt.map { .interrupts($0) } ?? .pollingThread,
                                         msixVectors: configuration.msixVectors)
            defer { driver.stop() }
            let responder = EchoResponder(mac: driver.macAddress, ip: configuration.address, runtime: runtime) { try driver.send($0) }
            driver.onFrame = { responder.handle($0) }
            let mac = driver.macAddress.map { String($0, radix: 16).leftPadded(to: 2) }.joined(separator: ":")
            printLine("e1000 on \(access.backendName) \(pci), \(runtime.mode) mode, \(driver.interruptScheme.map { "\($0)" } ?? "poll"): MAC \(mac), answering on \(configuration.addressText)")
            let deadline = monotonicNanoseconds() + UInt64(configuration.seconds * 1e9)
            while !driver.linkUp && driver.removal == nil && monotonicNanoseconds() < deadline { usleep(10_000) }
            printLine("link:       \(driver.linkUp ? "up" : "down")")
            var failed = false
            if let peer = configuration.peer {
                let count = configuration.count
                let answered = try responder.ping(peer.address, count: count)
                printLine("ping \(peer.text): \(answered) of \(count) answered")
                failed = answered != count
            }
            while driver.removal == nil && monotonicNanoseconds() < deadline { usleep(50_000) }
            if let failure = driver.failure, failure.isDeviceRemoval { throw failure }
            let stats = driver.statistics
            printLine("answered:   \(responder.answeredARP) ARP requests, \(responder.answeredEchoes) echo requests")
            printLine("frames:     \(stats.framesReceived) received (\(stats.bytesReceived) bytes), \(stats.framesSent) sent (\(stats.bytesSent) bytes)")
            if failed { throw HostExit(1) }
        }
        try finishVerification(verifier)
    }
}
