import ModelessBus
import ModelessDevice
import ModelessDrivers
import ModelessLogical
import ModelessRuntime
import ModelessSystem
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension VM {
    /// The bench's controller has two namespaces: 1 of 512-byte blocks (128 MiB) and 2 of
    /// 4096-byte blocks (64 MiB). Each is written, read back and verified on its own, in both
    /// modes, through the driver and through `modeless run nvme --namespace N` and
    /// `modeless serve nvme`; a namespace that is not active is refused with the active ones.
    @Suite("NVMe namespaces on the real controller")
    struct NVMeNamespaceIntegrationTests {
        static let namespaces: [NVMeController.Namespace] = [
            .init(identifier: 1, blockSize: 512, blockCount: 262_144),
            .init(identifier: 2, blockSize: 4096, blockCount: 16_384),
        ]

        @Test(arguments: ExecutionMode.allCases)
        func eachNamespaceIsWrittenReadAndVerifiedWithItsOwnBlockSize(_ mode: ExecutionMode) throws {
            try TestBench.withNVMeController(mode, .msix) { controller in
                #expect(controller.identity.namespaces == Self.namespaces)
                var generator = SystemRandomNumberGenerator()
                // The same byte offsets on both namespaces, different data: neither write may reach the other.
                let offset = Int.random(in: 0..<1000, using: &generator) * 4096
                let data = Self.namespaces.map { _ in randomBytes(controller.maximumTransfer, &generator) }
                for (namespace, bytes) in zip(Self.namespaces, data) {
                    try controller.write(lba: UInt64(offset / namespace.blockSize), bytes, namespace: namespace.identifier)
                    try controller.flush(namespace: namespace.identifier)
                }
                for (namespace, bytes) in zip(Self.namespaces, data) {
                    let back = try controller.read(lba: UInt64(offset / namespace.blockSize),
                                                   blocks: bytes.count / namespace.blockSize, namespace: namespace.identifier)
                    #expect(back == bytes, "namespace \(namespace.identifier), \(mode)")
                }
                // The last block of each, and one past it refused before the device.
                for namespace in Self.namespaces {
                    let last = namespace.blockCount - 1
                    let block = randomBytes(namespace.blockSize, &generator)
                    try controller.write(lba: last, block, namespace: namespace.identifier)
                    #expect(try controller.read(lba: last, blocks: 1, namespace: namespace.identifier) == block)
                    #expect(throws: NVMeController.Failure.self) {
                        try controller.read(lba: last, blocks: 2, namespace: namespace.identifier)
                    }
                }
                // Tagged reads of one 4 KiB block of each, completed by the DPC.
                let pool = try DMAPool(device: controller.device, chunkSize: 4096, count: 2)
                defer { pool.buffer.free() }
                let tags = Mutex<[UInt64: Bool]>([:])
                controller.setCompletionHandler { entry in tags.withLock { $0[entry.tag] = entry.succeeded } }
                for (index, namespace) in Self.namespaces.enumerated() {
                    try controller.submitRead(lba: UInt64(offset / namespace.blockSize), blocks: 4096 / namespace.blockSize,
                                              into: pool.chunk(index), of: pool, tag: UInt64(index), namespace: namespace.identifier)
                }
                for _ in 0..<10_000 where tags.withLock({ $0.count }) < 2 { usleep(1000) }
                #expect(tags.withLock { $0 } == [0: true, 1: true])
                for index in 0..<2 {
                    #expect(try pool.read(4096, from: pool.chunk(index)) == Array(data[index][0..<4096]), "tagged read of namespace \(index + 1)")
                }
                #expect(throws: NVMeController.Failure.badRequest("namespace 3 is not active; the active ones are: 1, 2")) {
                    try controller.read(lba: 0, blocks: 1, namespace: 3)
                }
            }
        }

        /// `run nvme --namespace N` verifies namespace N in both modes; --namespace 3 is refused,
        /// naming the active ones, before any I/O.
        @Test func runNVMeTakesTheNamespaceAndRefusesAnInactiveOne() throws {
            let nvme = try TestBench.nvme()
            let binder = PCIBinder()
            _ = try binder.bind(.address(nvme), to: .vfioPCI, force: true)
            defer { _ = try? binder.unbind(.address(nvme)) }
            for mode in ["user", "kernel-emulation"] {
                for namespace in ["1", "2"] {
                    let run = try TestBench.modeless("run", "nvme", nvme.description, "--mode", mode, "--namespace", namespace,
                                                     "--destructive", "--verify-mib", "4")
                    #expect(run.status == 0, "\(run.output)")
                    #expect(run.output.contains("verify:     4 MiB of namespace \(namespace) written"), "\(run.output)")
                    #expect(run.output.contains("read check: 1 MiB from block 0 of namespace \(namespace)"), "\(run.output)")
                }
            }
            let output = try TestBench.modeless("run", "nvme", nvme.description, "--namespace", "2").output
            #expect(output.contains("namespace 2: 16384 blocks of 4096 bytes"), "\(output)")
            let refused = try TestBench.modeless("run", "nvme", nvme.description, "--namespace", "3", "--destructive")
            #expect(refused.status == 64, "\(refused.output)")
            #expect(refused.output.contains("namespace 3 is not active; the active ones are: 1, 2"), "\(refused.output)")
            #expect(!refused.output.contains("read check") && !refused.output.contains("--destructive:"), "\(refused.output)")
            let bench = try TestBench.modeless("bench", "nvme", nvme.description, "--namespace", "3")
            #expect(bench.status == 64 && bench.output.contains("the active ones are: 1, 2"), "\(bench.output)")
            let benched = try TestBench.modeless("bench", "nvme", nvme.description, "--namespace", "2", "--seconds", "1", "--depths", "4")
            #expect(benched.status == 0, "\(benched.output)")
        }

        /// `serve nvme` serves one logical device per namespace: blk0 (namespace 1) and blk0-n2,
        /// each with its own geometry, and data written to one is not on the other.
        @Test(arguments: [false, true])
        func serveNVMeServesEachNamespace(_ kernel: Bool) throws {
            let nvme = try TestBench.nvme()
            let binder = PCIBinder()
            _ = try binder.bind(.address(nvme), to: .vfioPCI, force: true)
            defer { _ = try? binder.unbind(.address(nvme)) }
            var template = Array("/tmp/mln-XXXXXX".utf8CString)
            let directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
            let container = kernel ? "kernel" : "storage"
            let driver = try ChildProcess(
                try ProgramRunner.builtProgram("modeless"),
                ["serve", "nvme", nvme.description, "--mode", kernel ? "kernel-emulation" : "user"] + (kernel ? ["--kernel"] : ["--container", "storage"]),
                environment: ["MODELESS_CONTAINER_DIR": directory])
            // The controller's start and the container's take long in a loaded emulated guest.
            let lines = [driver.readLine(timeout: 300) ?? "", driver.readLine(timeout: 60) ?? ""]
            defer {
                driver.signal(SIGTERM)
                #expect((try? driver.wait()) == 0)
            }
            #expect(lines[0].hasPrefix("serving \(container)/blk0 "), "\(lines)")
            #expect(lines[1].hasPrefix("serving \(container)/blk0-n2 "), "\(lines)")

            let consumer = try LogicalContainer(name: "client", directory: ContainerDirectory(path: directory), serving: false)
            defer { consumer.shutdown() }
            var generator = SystemRandomNumberGenerator()
            var written: [[UInt8]] = []
            for (name, namespace) in zip(["blk0", "blk0-n2"], Self.namespaces) {
                let disk = try consumer.open("\(container)/\(name)")
                let geometry = try ParameterChain(blocks: 1, inputCapacity: 0, outputCapacity: 16).claimBlock()
                try BlockRequest.prepareGeometry(geometry)
                try consumer.send(disk, geometry)
                #expect(try BlockRequest.geometry(of: geometry) == (namespace.blockCount, namespace.blockSize))
                let data = randomBytes(8192, &generator)
                written.append(data)
                let chain = try ParameterChain(blocks: 1, inputCapacity: BlockRequest.dataOffset + 8192, outputCapacity: 8192)
                try BlockRequest.prepareWrite(try chain.claimBlock(), first: UInt64(65536 / namespace.blockSize), data: data,
                                              blockSize: namespace.blockSize)
                try consumer.send(disk, chain[0])
            }
            for (index, (name, namespace)) in zip(["blk0", "blk0-n2"], Self.namespaces).enumerated() {
                let disk = try consumer.open("\(container)/\(name)")
                let chain = try ParameterChain(blocks: 1, inputCapacity: BlockRequest.dataOffset, outputCapacity: 8192)
                try BlockRequest.prepareRead(try chain.claimBlock(), first: UInt64(65536 / namespace.blockSize),
                                             count: 8192 / namespace.blockSize)
                try consumer.send(disk, chain[0])
                #expect(chain[0].output.bytes == written[index], "\(container)/\(name)")
            }
        }
    }
}
