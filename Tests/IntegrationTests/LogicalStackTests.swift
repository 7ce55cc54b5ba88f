import ModelessBus
import ModelessLogical
import ModelessRuntime
import ModelessSystem
import Testing

#if canImport(Glibc)
import Glibc
#endif

extension VM {
    /// The seed's stack on the real NVMe controller: the NVMe driver provides a logical block
    /// device from its own process; a block service (a partition) in another process consumes
    /// it and provides its own; this test's process consumes that.
    @Suite("Logical device stack over the NVMe driver")
    struct LogicalStackIntegrationTests {
        static func modelessPath() throws -> String { try ProgramRunner.builtProgram("modeless") }

        /// `--kernel` serves the NVMe driver from the kernel emulation's container (in
        /// kernel-emulation mode); otherwise from user container `storage` in user mode.
        @Test(arguments: [false, true])
        func aRequestFlowsDownTheStackToDiskAndBack(_ kernel: Bool) throws {
            let nvme = try TestBench.nvme()
            let binder = PCIBinder()
            _ = try binder.bind(.address(nvme), to: .vfioPCI, force: true)
            defer { _ = try? binder.unbind(.address(nvme)) }

            var template = Array("/tmp/mld-XXXXXX".utf8CString)
            let directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
            let environment = ["MODELESS_CONTAINER_DIR": directory]
            let storageName = kernel ? "kernel" : "storage"
            let driver = try ChildProcess(
                try Self.modelessPath(),
                ["serve", "nvme", nvme.description, "--mode", kernel ? "kernel-emulation" : "user"] + (kernel ? ["--kernel"] : ["--container", "storage"]),
                environment: environment)
            let driverLine = driver.readLine(timeout: 60) ?? ""
            #expect(driverLine.hasPrefix("serving \(storageName)/blk0"), "\(driverLine)")
            let service = try ChildProcess(
                try Self.modelessPath(), ["serve", "partition", "--of", "\(storageName)/blk0", "--first", "4096", "--container", "blocksvc"],
                environment: environment)
            let serviceLine = service.readLine(timeout: 60) ?? ""
            #expect(serviceLine.hasPrefix("serving blocksvc/blk0"), "\(serviceLine)")
            defer {
                service.signal(SIGTERM)
                driver.signal(SIGTERM)
                #expect((try? service.wait()) == 0)
                #expect((try? driver.wait()) == 0)
            }

            let consumer = try LogicalContainer(name: "client", directory: ContainerDirectory(path: directory), serving: false)
            defer { consumer.shutdown() }
            let partition = try consumer.open("blocksvc/blk0")
            let disk = try consumer.open("\(storageName)/blk0")
            let geometry = try ParameterChain(blocks: 2, inputCapacity: 0, outputCapacity: 16).claimBlock()
            try BlockRequest.prepareGeometry(geometry)
            try consumer.send(partition, geometry)
            #expect(try BlockRequest.geometry(of: geometry) == (262_144 - 4096, 512))

            // 1 MiB of random data through the partition in 32 KiB requests, read back two ways.
            var generator = SystemRandomNumberGenerator()
            let chunk = 32 * 1024
            let chunks = (0..<32).map { _ in (0..<chunk).map { _ in UInt8.random(in: 0...255, using: &generator) } }
            let chain = try ParameterChain(blocks: 2, inputCapacity: BlockRequest.dataOffset + chunk, outputCapacity: chunk)
            for (index, data) in chunks.enumerated() {
                chain.reset()
                try BlockRequest.prepareWrite(try chain.claimBlock(), first: UInt64(index * chunk / 512), data: data, blockSize: 512)
                try consumer.send(partition, chain[0])
                #expect(chain.claimedCount == 2, "the partition used the second block for its request to the disk")
                #expect(chain[1].deviceName == "\(storageName)/blk0")
            }
            for (index, data) in chunks.enumerated() {
                chain.reset()
                try BlockRequest.prepareRead(try chain.claimBlock(), first: UInt64(index * chunk / 512), count: chunk / 512)
                try consumer.send(partition, chain[0])
                #expect(chain[0].output.bytes == data, "chunk \(index) through the partition")
                chain.reset()
                try BlockRequest.prepareRead(try chain.claimBlock(), first: UInt64(4096 + index * chunk / 512), count: chunk / 512)
                try consumer.send(disk, chain[0])
                #expect(chain[0].output.bytes == data, "chunk \(index) on the disk, 4096 blocks on")
            }
            let listing = ContainerRegistry(directory: ContainerDirectory(path: directory)).runningContainers()
            #expect(listing.map(\.name) == ["blocksvc", storageName])
            #expect(listing.first { $0.name == storageName }?.placement == (kernel ? .kernelEmulation : .user))
            try consumer.close(partition)
            try consumer.close(disk)
        }
    }
}
