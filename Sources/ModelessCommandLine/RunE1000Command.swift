import ArgumentParser
import ModelessDevice
import ModelessDrivers
import ModelessRuntime
import ModelessServices

struct RunE1000: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "e1000",
        abstract: "Run the e1000 driver: answer ARP and ping on an address and ping a peer, or serve the kernel through a TAP interface (--tap).",
        discussion: "The NIC must be bound to vfio-pci or uio_pci_generic (`modeless bind ADDR`).")

    @Argument(help: "The NIC: 0000:00:04.0, 00:04.0 or 8086:100e.")
    var device: String

    @Option(help: "The IPv4 address to answer on (without --tap).")
    var ip: String?

    @OptionGroup var tapOptions: TapOptions

    @Option(help: "A peer to ping (after resolving it with ARP).")
    var peer: String?

    @Option(help: "Echo requests to send to the peer.")
    var count = 3

    @Option(help: "Seconds to keep answering before stopping.")
    var seconds = 10.0

    @Option(help: "Execution mode: user or kernel-emulation.")
    var mode: ExecutionMode = .user

    @OptionGroup var verification: VerifyOption

    @Option(help: "Interrupts: intx (the 82540EM's only kind in QEMU), msi, msix (82574L: a vector per cause), msix-one (82574L: one MSI-X vector), or poll (no interrupts).")
    var irq: String = "intx"

    @Flag(help: "Allow DMA over UIO, which gives the NIC no DMA isolation.")
    var allowUnisolatedDMA = false

    func run() throws {
        if let name = tapOptions.tap { return try runTap(name) }
        guard let ip else { throw ValidationError("give --ip ADDRESS to answer ping on, or --tap NAME to serve the kernel through a TAP interface") }
        guard let address = EchoResponder.address(ip) else { throw ValidationError("--ip \(ip) is not an IPv4 address") }
        let peerAddress = try peer.map { text -> [UInt8] in
            guard let parsed = EchoResponder.address(text) else { throw ValidationError("--peer \(text) is not an IPv4 address") }
            return parsed
        }
        let interrupt: InterruptKind?
        var msixVectors = E1000Driver.MSIXVectors.perCause
        switch irq {
        case "msix": interrupt = .msix
        case "msix-one": interrupt = .msix; msixVectors = .one
        case "msi": interrupt = .msi
        case "intx": interrupt = .intx
        case "poll": interrupt = nil
        default: throw ValidationError("--irq must be intx, msi, msix, msix-one or poll, not \(irq)")
        }
        var configuration = E1000Run.Configuration(device: device, addressText: ip, address: address)
        configuration.peer = peerAddress.map { (peer!, $0) }
        configuration.count = count
        configuration.seconds = seconds
        configuration.mode = mode
        configuration.interrupt = interrupt
        configuration.msixVectors = msixVectors
        configuration.allowUnisolatedDMA = allowUnisolatedDMA
        configuration.verify = verification.verify
        try hosting { try E1000Run(configuration, report: .console).run() }
    }
}
