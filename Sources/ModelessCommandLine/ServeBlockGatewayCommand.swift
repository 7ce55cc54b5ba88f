import ArgumentParser
import ModelessDrivers
import ModelessRuntime
import ModelessServices

struct ServeBlockGateway: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "block-gateway",
        abstract: "The e1000 driver as the provider of a network block gateway: UDP block requests flow down a logical device stack.",
        discussion: """
            Runs the e1000 driver on a NIC bound to vfio-pci, answers ARP and ping on --ip, and provides \
            device --device (default net0), which forwards reads and writes to the block device --of. \
            Datagrams of the gateway protocol (docs/logical-devices.md) to --ip, port --port, become \
            requests to that device; their replies go back to the sender. With --kernel and \
            --mode kernel-emulation this is the seed's example: the network driver in the kernel emulation.
            """)

    @OptionGroup var options: ServeOptions

    @Argument(help: "The e1000 NIC: 0000:00:04.0, 00:04.0 or 8086:100e.")
    var address: String

    @Option(help: "The IPv4 address the gateway answers on.")
    var ip: String

    @Option(help: "The block device below, container/device.")
    var of: String

    @Option(help: "The UDP port of the gateway protocol.")
    var port: UInt16 = 7470

    @Option(help: "Execution mode: user or kernel-emulation.")
    var mode: ExecutionMode = .user

    @Option(help: "Interrupts: intx or poll.")
    var irq: String = "intx"

    func run() throws {
        guard let address = EchoResponder.address(ip) else { throw ValidationError("--ip \(ip) is not an IPv4 address") }
        guard irq == "intx" || irq == "poll" else { throw ValidationError("--irq must be intx or poll, not \(irq)") }
        var serving = BlockGatewayServing(device: self.address, address: address, lower: of, host: options.host)
        serving.port = port
        serving.mode = mode
        serving.interrupt = irq == "intx" ? .intx : nil
        try hosting { try serving.run() }
    }
}
