import ModelessBus
import ModelessDevice
import ModelessDrivers
import ModelessRuntime
import Testing

#if canImport(Glibc)
import Glibc
#endif

extension VM {
    /// The e1000 driver on QEMU's 82540EM (00:04.0) under the driver verifier, with the Linux
    /// kernel's e1000 driver and IP stack on the other NIC of the same hub (link-local
    /// addresses on the guest's isolated hub) as its peer.
    @Suite("e1000 driver on the real NIC")
    struct E1000DriverIntegrationTests {
        static let ours: [UInt8] = [169, 254, 79, 2], kernel: [UInt8] = [169, 254, 79, 1]

        /// The guest's 82574L (QEMU's e1000e), if the bench has one on the hub (scripts/vm/run
        /// gives none by default: q35 adds its own only when no -netdev is given).
        static let e1000e: PCIAddress? = TestBench.isGuest ? try? TestBench.address(vendor: 0x8086, device: 0x10d3) : nil

        /// Binds our NIC (`ours`, or the first 82540EM) to vfio-pci and gives the kernel's NIC
        /// its address, for `body`.
        func withBench(_ ours: PCIAddress? = nil, _ body: (PCIAddress) throws -> Void) throws {
            let ours = try ours ?? TestBench.e1000(0), kernelNIC = try TestBench.e1000(1)
            let loaded = try TestBench.shell("modprobe e1000").status
            #expect(loaded == 0)
            let binder = PCIBinder()
            _ = try binder.bind(.address(ours), to: .vfioPCI, force: true)
            defer { _ = try? binder.unbind(.address(ours)) }
            var interface = ""
            for _ in 0..<100 where interface.isEmpty {
                interface = (try? TestBench.shell("ls /sys/bus/pci/devices/\(kernelNIC)/net/").output)
                    .flatMap { $0.split(whereSeparator: \.isWhitespace).first.map(String.init) } ?? ""
                if interface.isEmpty { usleep(100_000) }
            }
            try #require(!interface.isEmpty, "the kernel's e1000 has no interface")
            let configured = try TestBench.shell("ip addr add 169.254.79.1/24 dev \(interface) && ip link set \(interface) up").status
            #expect(configured == 0)
            defer { _ = try? TestBench.shell("ip addr del 169.254.79.1/24 dev \(interface)") }
            try body(ours)
        }

        /// Starts the driver with an echo responder on 169.254.79.2, under a verifier.
        func withDriver(_ address: PCIAddress, _ mode: ExecutionMode, _ receive: E1000Driver.ReceiveMode,
                        msixVectors: E1000Driver.MSIXVectors = .perCause,
                        _ body: (E1000Driver, EchoResponder) throws -> Void) throws {
            let device = try DeviceOpener.open(address)
            defer { device.close() }
            let verifier = DriverVerifier()
            let runtime = try makeRuntime(mode, options: RuntimeOptions(verifier: verifier))
            defer {
                runtime.shutdown()
                #expect(verifier.reports.isEmpty, "\(verifier.reports)")
            }
            let driver = try E1000Driver(device: device, runtime: runtime, receive: receive, msixVectors: msixVectors)
            defer { driver.stop() }
            let responder = EchoResponder(mac: driver.macAddress, ip: Self.ours, runtime: runtime) { try driver.send($0) }
            driver.onFrame = { responder.handle($0) }
            for _ in 0..<500 where !driver.linkUp { usleep(10_000) }
            #expect(driver.linkUp)
            try body(driver, responder)
            #expect(driver.failure == nil)
        }

        @Test(arguments: [(ExecutionMode.user, E1000Driver.ReceiveMode.interrupts(.intx)), (.kernelEmulation, .interrupts(.intx)),
                          (.kernelEmulation, .pollingThread)])
        func pingsTheKernelAndAnswersItsPings(_ mode: ExecutionMode, _ receive: E1000Driver.ReceiveMode) throws {
            try withBench { address in
                try withDriver(address, mode, receive) { driver, responder in
                    let answered = try responder.ping(Self.kernel, count: 3)
                    #expect(answered == 3, "the kernel answered our echo requests")
                    let pinged = try TestBench.shell("ip neigh flush all; busybox ping -c 3 -W 3 169.254.79.2")
                    let state = "statistics \(driver.statistics), passes \(driver.receivePasses), errors \(driver.receiveErrors), "
                        + "echoes \(responder.answeredEchoes), ARP \(responder.answeredARP), dropped \(responder.droppedPackets), "
                        + "unsent \(responder.failedSends), failure \(String(describing: driver.failure))"
                    #expect(pinged.status == 0, "the kernel's ping got our replies: \(pinged.output); \(state)")
                    #expect(responder.answeredEchoes >= 3 && responder.droppedPackets == 0, "\(state)")
                    #expect(driver.statistics.framesReceived > 0)
                }
            }
        }

        /// A driver killed mid-traffic (never stopped; its process's device and runtime simply
        /// gone) leaves the NIC running with its rings and interrupts enabled; the next driver's
        /// start resets it and works.
        @Test(arguments: ExecutionMode.allCases)
        func startsCleanAfterAPredecessorKilledMidTraffic(_ mode: ExecutionMode) throws {
            try withBench { address in
                do {
                    let device = try DeviceOpener.open(address)
                    let runtime = try makeRuntime(mode)
                    let predecessor = try E1000Driver(device: device, runtime: runtime, interrupt: .intx)
                    let broadcast = [UInt8](repeating: 0xFF, count: 6)
                    for index in 0..<200 {
                        try predecessor.send(broadcast + predecessor.macAddress + [0x88, 0xB5] + [UInt8](repeating: UInt8(index & 0xFF), count: 46))
                    }
                    _ = try TestBench.shell("busybox ping -c 2 -W 1 169.254.79.2")  // Traffic arriving as it dies.
                    runtime.shutdown()
                    device.close()
                    withExtendedLifetime(predecessor) {}
                }
                try withDriver(address, mode, .interrupts(.intx)) { _, responder in
                    let answered = try responder.ping(Self.kernel, count: 2)
                    #expect(answered == 2)
                    let pinged = try TestBench.shell("ip neigh flush all; busybox ping -c 2 -W 3 169.254.79.2")
                    #expect(pinged.status == 0, "\(pinged.output)")
                }
            }
        }

        /// The 82574L with its own EEPROM layout, by INTx and by MSI, in both modes.
        @Test(.enabled(if: e1000e != nil, "no e1000e (8086:10d3) on the bench's hub"),
              arguments: [(ExecutionMode.user, InterruptKind.intx), (.kernelEmulation, .intx), (.user, .msi), (.kernelEmulation, .msi)])
        func the82574LPingsTheKernel(_ mode: ExecutionMode, _ interrupt: InterruptKind) throws {
            try withBench(Self.e1000e) { address in
                try withDriver(address, mode, .interrupts(interrupt)) { driver, responder in
                    #expect(driver.variant == .i82574L)
                    let answered = try responder.ping(Self.kernel, count: 3)
                    #expect(answered == 3, "the kernel answered our echo requests")
                    let pinged = try TestBench.shell("ip neigh flush all; busybox ping -c 3 -W 3 169.254.79.2")
                    #expect(pinged.status == 0, "\(pinged.output)")
                }
            }
        }
    }
}
