import ModelessDevice
import ModelessDrivers
import ModelessLogical
import ModelessRuntime

/// `modeless serve block-gateway`: the e1000 driver as the provider of a network block gateway.
/// It answers ARP and ping on its address and provides a device that forwards reads and writes
/// to a block device below; datagrams of the gateway protocol become requests to that device.
package struct BlockGatewayServing: HostedWork {
    /// The NIC as the person named it (an address or vendor:device id).
    package var device: String
    /// The IPv4 address answered on (four bytes).
    package var address: [UInt8]
    /// The block device below, container/device.
    package var lower: String
    /// The UDP port of the gateway protocol.
    package var port: UInt16 = 7470
    /// The execution mode.
    package var mode: ExecutionMode = .user
    /// Interrupts (intx) or polling (nil).
    package var interrupt: InterruptKind? = .intx
    /// Where and how the gateway's device is served.
    package var host: ProviderHost
    /// Where serving reports.
    package var report: HostReport { host.report }

    /// The gateway of NIC `device` answering on `address`, forwarding to `lower`, served through `host`.
    package init(device: String, address: [UInt8], lower: String, host: ProviderHost) {
        self.device = device
        self.address = address
        self.lower = lower
        self.host = host
    }

    /// Serves until SIGINT or SIGTERM.
    package func run() throws {
        TerminationSignals.block()
        try withBoundDevice(device, mode: mode) { _, access, runtime in
            let driver = try E1000Driver(device: access, runtime: runtime, interrupt: interrupt)
            defer { driver.stop() }
            let responder = EchoResponder(mac: driver.macAddress, ip: address, runtime: runtime) { try driver.send($0) }
            var gateway: NetworkBlockGateway?
            defer { gateway?.stop() }
            try host.serve(defaultContainer: "gateway", defaultDevice: "net0") { container in
                let made = try NetworkBlockGateway(container: container, device: host.configuration.device ?? "net0", lower: lower,
                                                   ip: address, port: port, runtime: runtime) { try driver.send($0) }
                gateway = made
                driver.onFrame = { frame in if !made.handle(frame) { responder.handle(frame) } }
                return made.handlers
            }
        }
    }
}
