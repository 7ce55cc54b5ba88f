import ModelessBus
import ModelessDevice
import ModelessDrivers
import ModelessRuntime
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension VM {
    /// The NVMe sample driver on QEMU's NVMe controller (fresh namespaces each boot: 128 MiB of
    /// 512-byte blocks, 64 MiB of 4096-byte blocks).
    @Suite("NVMe driver on the real controller")
    struct NVMeDriverIntegrationTests {
        /// A predecessor killed mid-I/O (tagged reads submitted, completions never taken, no
        /// stop: its process gone) leaves the controller enabled; the next start resets it,
        /// works, and takes none of the predecessor's completions as its own.
        @Test(arguments: [(ExecutionMode.user, NVMeController.Completion.intx), (.kernelEmulation, .msix)])
        func startsCleanAfterAKilledPredecessor(_ mode: ExecutionMode, _ completion: NVMeController.Completion) throws {
            let nvme = try TestBench.nvme()
            let binder = PCIBinder()
            _ = try binder.bind(.address(nvme), to: .vfioPCI, force: true)
            defer { _ = try? binder.unbind(.address(nvme)) }
            do {
                let device = try DeviceOpener.open(nvme)
                let runtime = try makeRuntime(.user)
                let controller = try NVMeController(device: device, runtime: runtime, completion: .poll)
                let pool = try DMAPool(device: device, chunkSize: 4096, count: 16)
                for tag in 0..<16 {
                    try controller.submitRead(lba: UInt64(tag * 8), blocks: 8, into: pool.chunk(tag), of: pool, tag: UInt64(tag))
                }
                usleep(50_000)
                runtime.shutdown()
                device.close()  // Killed: no stop().
            }
            try TestBench.withNVMeController(mode, completion) { controller in
                let tags = Mutex<[UInt64]>([])
                controller.setCompletionHandler { entry in tags.withLock { $0.append(entry.tag) } }
                try controller.write(lba: 64, [UInt8](repeating: 0x42, count: 4096))
                #expect(try controller.read(lba: 64, blocks: 8) == [UInt8](repeating: 0x42, count: 4096))
                let pool = try DMAPool(device: controller.device, chunkSize: 4096, count: 4)
                for tag in 100..<104 {
                    try controller.submitRead(lba: 64, blocks: 8, into: pool.chunk(tag - 100), of: pool, tag: UInt64(tag))
                }
                for _ in 0..<10_000 where tags.withLock({ $0.count }) < 4 { usleep(1000) }
                usleep(50_000)
                #expect(tags.withLock { $0.sorted() } == [100, 101, 102, 103])
            }
        }

        @Test(arguments: [(ExecutionMode.user, NVMeController.Completion.msix), (.kernelEmulation, .msix),
                          (.user, .intx), (.kernelEmulation, .intx), (.user, .poll)])
        func identifyWriteReadVerify(_ mode: ExecutionMode, _ completion: NVMeController.Completion) throws {
            try TestBench.withNVMeController(mode, completion) { controller in
                let identity = try #require(controller.identity)
                #expect(identity.vendorID == 0x1b36)
                #expect(identity.serialNumber == "modeless-nvme0")
                #expect(identity.modelNumber == "QEMU NVMe Ctrl")
                #expect(identity.blockSize == 512 && identity.blockCount == 262_144)
                #expect(identity.namespaces == VM.NVMeNamespaceIntegrationTests.namespaces)
                // 2 MiB of a pattern that differs per run, across multi-page PRP lists, then back.
                var generator = SystemRandomNumberGenerator()
                let chunk = controller.maximumTransfer
                let chunks = (0..<(2 << 20) / chunk).map { _ in randomBytes(chunk, &generator) }
                let firstBlock = UInt64.random(in: 0..<1000, using: &generator) * 8
                for (index, data) in chunks.enumerated() {
                    try controller.write(lba: firstBlock + UInt64(index * chunk / 512), data)
                }
                try controller.flush()
                for (index, data) in chunks.enumerated() {
                    #expect(try controller.read(lba: firstBlock + UInt64(index * chunk / 512), blocks: chunk / 512) == data)
                }
                // A single block and a two-page transfer (PRP2 as a page, not a list).
                try controller.write(lba: 7, [UInt8](repeating: 0xA5, count: 512))
                #expect(try controller.read(lba: 7, blocks: 1) == [UInt8](repeating: 0xA5, count: 512))
                try controller.write(lba: 100, [UInt8](repeating: 0x3C, count: 8192))
                #expect(try controller.read(lba: 100, blocks: 16) == [UInt8](repeating: 0x3C, count: 8192))
                if completion != .poll { #expect(controller.isrCalls > 0) }
            }
        }

        /// 64 MiB of random data, written through the driver and read back identical.
        @Test(arguments: ExecutionMode.allCases)
        func sixtyFourMiBOfRandomData(_ mode: ExecutionMode) throws {
            try TestBench.withNVMeController(mode, .msix) { (controller) throws in
                var generator = SystemRandomNumberGenerator()
                let chunk = controller.maximumTransfer
                let seed = generator.next()
                func data(_ index: Int) -> [UInt8] {
                    var chunkGenerator = SplitMix(seed: seed &+ UInt64(index))
                    var bytes = [UInt8](repeating: 0, count: chunk)
                    bytes.withUnsafeMutableBytes { raw in
                        for offset in stride(from: 0, to: chunk, by: 8) {
                            raw.storeBytes(of: chunkGenerator.next(), toByteOffset: offset, as: UInt64.self)
                        }
                    }
                    return bytes
                }
                let chunks = (64 << 20) / chunk
                for index in 0..<chunks { try controller.write(lba: UInt64(index * chunk / 512), data(index)) }
                try controller.flush()
                var mismatches = 0
                for index in 0..<chunks where try controller.read(lba: UInt64(index * chunk / 512), blocks: chunk / 512) != data(index) {
                    mismatches += 1
                }
                #expect(mismatches == 0)
            }
        }

        @Test func badRequestsAreRefusedBeforeReachingTheDevice() throws {
            try TestBench.withNVMeController(.user, .msix) { (controller) throws in
                #expect(throws: NVMeController.Failure.self) { try controller.read(lba: 262_143, blocks: 2) }
                #expect(throws: NVMeController.Failure.self) { try controller.read(lba: 0, blocks: 0) }
                #expect(throws: NVMeController.Failure.self) { try controller.write(lba: 0, [1, 2, 3]) }
                #expect(throws: NVMeController.Failure.self) {
                    try controller.read(lba: 0, blocks: controller.maximumTransfer / 512 + 1)
                }
                #expect(try controller.read(lba: 262_143, blocks: 1).count == 512)
            }
        }
    }
}

/// `count` random bytes, eight at a time.
func randomBytes(_ count: Int, _ generator: inout SystemRandomNumberGenerator) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: count)
    bytes.withUnsafeMutableBytes { raw in
        for offset in stride(from: 0, to: count - 7, by: 8) { raw.storeBytes(of: generator.next(), toByteOffset: offset, as: UInt64.self) }
    }
    return bytes
}

/// A small seeded generator, so a pattern can be made again to check it.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
