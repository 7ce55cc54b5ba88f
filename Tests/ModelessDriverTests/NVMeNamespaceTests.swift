#if canImport(Glibc)
import Glibc
#endif
import ModelessDevice
import ModelessDrivers
import ModelessModels
import ModelessRuntime
import Synchronization
import Testing

/// The NVMe driver on a controller with several namespaces of different LBA sizes.
@Suite("The NVMe driver's namespaces")
struct NVMeNamespaceTests {
    /// Namespace 1 of 512-byte blocks, namespace 3 of 4096-byte blocks (2 is inactive).
    static func model() -> NVMeModel {
        NVMeModel(namespaces: [.init(identifier: 1, blocks: 4096), .init(identifier: 3, blocks: 1024, blockSize: 4096)])
    }

    @Test(arguments: ExecutionMode.allCases, [NVMeController.Completion.msix, .poll])
    func eachActiveNamespaceIsIdentifiedAndAddressedWithItsBlockSize(_ mode: ExecutionMode,
                                                                     _ completion: NVMeController.Completion) throws {
        try withVerifiedNVMe(mode, completion, model: Self.model()) { controller, model, device in
            let identity = controller.identity!
            #expect(identity.namespaces == [
                .init(identifier: 1, blockSize: 512, blockCount: 4096, metadataSize: 0),
                .init(identifier: 3, blockSize: 4096, blockCount: 1024, metadataSize: 0),
            ])
            #expect(identity.namespaceLimit == 3)
            #expect(identity.blockSize == 512 && identity.blockCount == 4096, "the first active namespace")

            let large = (0..<8 * 4096).map { UInt8(truncatingIfNeeded: $0 &* 5 &+ 1) }
            try controller.write(lba: 10, large, namespace: 3)
            #expect(model.contents(block: 10, count: 8, namespace: 3) == large)
            #expect(try controller.read(lba: 10, blocks: 8, namespace: 3) == large)
            #expect(model.contents(block: 10, count: 8, namespace: 1) == [UInt8](repeating: 0, count: 4096), "namespace 1 untouched")
            let small = [UInt8](repeating: 0xA5, count: 1024)
            try controller.write(lba: 10, small)
            #expect(model.contents(block: 10, count: 2, namespace: 1) == small)
            #expect(try controller.read(lba: 10, blocks: 1, namespace: 3) == Array(large[0..<4096]), "namespace 3 untouched")
            try controller.flush(namespace: 3)

            // Tagged: one 4096-byte block of namespace 3.
            let pool = try DMAPool(device: device, chunkSize: 4096, count: 2)
            let outcomes = Mutex<[NVMeIOCompletion]>([])
            controller.setCompletionHandler { entry in outcomes.withLock { $0.append(entry) } }
            try controller.submitRead(lba: 11, blocks: 1, into: pool.chunk(0), of: pool, tag: 7, namespace: 3)
            for _ in 0..<5_000 where outcomes.withLock({ $0.isEmpty }) {
                if completion == .poll { try controller.pollCompletions() }
                usleep(1000)
            }
            #expect(outcomes.withLock { $0.map { [$0.tag, $0.succeeded ? 1 : 0] } } == [[7, 1]])
            #expect(try pool.read(4096, from: pool.chunk(0)) == Array(large[4096..<8192]))
        }
    }

    /// The start identifies namespaces in rounds of commands sent together (16 per round, into
    /// separate pages): with 40 of them (every third inactive), three rounds past the queues'
    /// two, each namespace with its own size and block size, in order.
    @Test(arguments: [NVMeController.Completion.msix, .poll])
    func manyNamespacesAreIdentifiedInRoundsEachWithItsOwnData(_ completion: NVMeController.Completion) throws {
        let active = (1...60).filter { $0 % 3 != 0 }.prefix(40).map { UInt32($0) }
        let model = NVMeModel(namespaces: active.map { .init(identifier: $0, blocks: 1000 + Int($0), blockSize: $0 % 2 == 0 ? 4096 : 512) })
        try withVerifiedNVMe(.user, completion, model: model) { controller, _, _ in
            let expected: [NVMeController.Namespace] = active.map {
                .init(identifier: $0, blockSize: $0 % 2 == 0 ? 4096 : 512, blockCount: 1000 + UInt64($0), metadataSize: 0)
            }
            #expect(controller.identity.namespaces == expected)
            #expect(controller.startSteps.contains("I/O queues and namespaces"), "\(controller.startSteps)")
            let last = active.last!
            let block = try controller.read(lba: 0, blocks: 1, namespace: last)
            #expect(block.count == (last % 2 == 0 ? 4096 : 512))
        }
    }

    @Test func requestsOutsideANamespaceAreRefusedBeforeTheDevice() throws {
        try withVerifiedNVMe(.user, .msix, model: Self.model()) { controller, model, device in
            #expect(throws: NVMeController.Failure.badRequest("namespace 2 is not active; the active ones are: 1, 3")) {
                _ = try controller.read(lba: 0, blocks: 1, namespace: 2)
            }
            #expect(throws: NVMeController.Failure.self) { _ = try controller.read(lba: 1023, blocks: 2, namespace: 3) }
            #expect(throws: NVMeController.Failure.self) { try controller.write(lba: 0, [UInt8](repeating: 0, count: 512), namespace: 3) }
            #expect(throws: NVMeController.Failure.self) { _ = try controller.read(lba: 0, blocks: 33, namespace: 3) }
            let pool = try DMAPool(device: device, chunkSize: 4096, count: 1)
            #expect(throws: NVMeController.Failure.self) {
                try controller.submitRead(lba: 0, blocks: 2, into: pool.chunk(0), of: pool, tag: 0, namespace: 3)
            }
            #expect(model.ioCommands.isEmpty)
        }
    }
}
