import ModelessBus
import ModelessDrivers
import ModelessLogical
import ModelessSystem
import Testing

#if canImport(Glibc)
import Glibc
#endif

extension VM {
    /// The seed's example end to end: the e1000 driver in the kernel emulation provides
    /// `kernel/net0`; UDP requests from the guest kernel's IP stack (on the second NIC of the
    /// same hub) go through it to a partition service in one process and the NVMe driver in
    /// another, and the replies come back over the network.
    @Suite("Network requests down the logical stack to disk")
    struct NetworkGatewayIntegrationTests {
        @Test func writesAndReadsOverUDPReachTheDiskThroughTheStack() throws {
            let nvme = try TestBench.nvme()
            let ours = try TestBench.e1000(0), kernelNIC = try TestBench.e1000(1)
            #expect(try TestBench.shell("modprobe e1000").status == 0)
            let binder = PCIBinder()
            _ = try binder.bind(.address(nvme), to: .vfioPCI, force: true)
            defer { _ = try? binder.unbind(.address(nvme)) }
            _ = try binder.bind(.address(ours), to: .vfioPCI, force: true)
            defer { _ = try? binder.unbind(.address(ours)) }
            var interface = ""
            #expect(eventuallyTrue {
                interface = (try? TestBench.shell("ls /sys/bus/pci/devices/\(kernelNIC)/net/").output)
                    .flatMap { $0.split(whereSeparator: \.isWhitespace).first.map(String.init) } ?? ""
                return !interface.isEmpty
            })
            #expect(try TestBench.shell("ip addr add 169.254.78.1/24 dev \(interface) && ip link set \(interface) up").status == 0)
            defer { _ = try? TestBench.shell("ip addr del 169.254.78.1/24 dev \(interface)") }

            var template = Array("/tmp/mlg-XXXXXX".utf8CString)
            let directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
            let environment = ["MODELESS_CONTAINER_DIR": directory]
            let modeless = try ProgramRunner.builtProgram("modeless")
            let disk = try ChildProcess(modeless, ["serve", "nvme", nvme.description, "--container", "storage"], environment: environment)
            #expect((disk.readLine(timeout: 60) ?? "").hasPrefix("serving storage/blk0"))
            let partition = try ChildProcess(modeless, ["serve", "partition", "--of", "storage/blk0", "--first", "4096", "--container", "blocksvc"],
                                             environment: environment)
            #expect((partition.readLine(timeout: 60) ?? "").hasPrefix("serving blocksvc/blk0"))
            let gateway = try ChildProcess(modeless, ["serve", "block-gateway", ours.description, "--ip", "169.254.78.2", "--of", "blocksvc/blk0",
                                                      "--kernel", "--mode", "kernel-emulation"], environment: environment)
            let gatewayLine = gateway.readLine(timeout: 60) ?? ""
            #expect(gatewayLine.hasPrefix("serving kernel/net0"), "\(gatewayLine)")
            defer {
                for process in [gateway, partition, disk] {
                    process.signal(SIGTERM)
                    #expect((try? process.wait()) == 0, "\(process.program) ended cleanly")
                }
            }

            let client = try UDPClient(bindTo: "169.254.78.1", peer: "169.254.78.2", port: 7470)
            defer { client.close() }
            var generator = SystemRandomNumberGenerator()
            let chunks = (0..<32).map { _ in (0..<1024).map { _ in UInt8.random(in: 0...255, using: &generator) } }
            for (index, data) in chunks.enumerated() {
                let reply = try client.exchange(BlockGatewayMessage(operation: .write, tag: UInt32(index), firstBlock: UInt64(index * 2),
                                                                    blockCount: 2, data: data))
                #expect(reply.status == 0, "write \(index) over the network")
            }
            for (index, data) in chunks.enumerated() {
                let reply = try client.exchange(BlockGatewayMessage(operation: .read, tag: UInt32(1000 + index), firstBlock: UInt64(index * 2),
                                                                    blockCount: 2))
                #expect(reply.status == 0 && reply.data == data, "read \(index) over the network")
            }
            // On the disk itself, 4096 blocks on (the partition's offset), through the NVMe driver's device.
            let consumer = try LogicalContainer(name: "checker", directory: ContainerDirectory(path: directory), serving: false)
            defer { consumer.shutdown() }
            let raw = try consumer.open("storage/blk0")
            let chain = try ParameterChain(blocks: 1, inputCapacity: 16, outputCapacity: 32 * 1024)
            try BlockRequest.prepareRead(try chain.claimBlock(), first: 4096, count: 64)
            try consumer.send(raw, chain[0])
            #expect(chain[0].output.bytes == chunks.flatMap { $0 }, "the data is on the disk where the stack put it")
            try consumer.close(raw)
        }

        func eventuallyTrue(_ condition: () -> Bool) -> Bool {
            for _ in 0..<100 {
                if condition() { return true }
                usleep(100_000)
            }
            return false
        }
    }
}

/// A UDP socket of the guest kernel's IP stack, sending gateway requests and waiting for
/// their replies (sent again after 1 s without one, up to 5 times).
final class UDPClient {
    private let fd: Int32
    private var peer = sockaddr_in()

    init(bindTo local: String, peer address: String, port: UInt16) throws {
        fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw SystemError("socket", "UDP", errno: .current) }
        var bound = sockaddr_in()
        bound.sin_family = sa_family_t(AF_INET)
        inet_pton(AF_INET, local, &bound.sin_addr)
        let result = withUnsafePointer(to: &bound) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard result == 0 else { throw SystemError("bind", local, errno: .current) }
        peer.sin_family = sa_family_t(AF_INET)
        peer.sin_port = port.bigEndian
        inet_pton(AF_INET, address, &peer.sin_addr)
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    func close() { Glibc.close(fd) }

    func exchange(_ message: BlockGatewayMessage) throws -> BlockGatewayMessage {
        let bytes = message.bytes
        for _ in 0..<5 {
            _ = bytes.withUnsafeBytes { buffer in
                withUnsafePointer(to: &peer) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        sendto(fd, buffer.baseAddress, buffer.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                    }
                }
            }
            var answer = [UInt8](repeating: 0, count: 2048)
            while true {
                let count = answer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                guard count > 0 else { break }  // timed out: send again
                if let reply = BlockGatewayMessage(Array(answer[0..<count])), reply.isReply, reply.tag == message.tag { return reply }
            }
        }
        throw SystemError("receive a gateway reply to tag \(message.tag)", "169.254.78.2:7470", errno: .timedOut)
    }
}
