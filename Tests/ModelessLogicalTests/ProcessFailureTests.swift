import ModelessLogical
import ModelessSystem
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The `modeless` binary built next to this test bundle.
func modelessPath() throws -> String { try ProgramRunner.builtProgram("modeless") }

/// Providers and consumers in separate processes, killed with SIGKILL mid-request.
@Suite("Logical devices: processes that die")
struct ProcessFailureTests {
    @Test func aConsumerKilledMidRequestIsClosedOncePerOpen() throws {
        let directory = temporaryContainerDirectory()
        let provider = try LogicalContainer(name: "prov", directory: directory)
        defer { provider.shutdown() }
        let disk = MemoryDiskProvider(blockCount: 64, delayNanoseconds: 2_000_000)
        try provider.createDevice("disk", handlers: disk.handlers)

        let consumer = try ChildProcess(
            try modelessPath(), ["consume", "prov/disk", "--opens", "3", "--depth", "4"],
            environment: ["MODELESS_CONTAINER_DIR": directory.path])
        let ready = try #require(consumer.readLine(), "the consumer process started")
        #expect(ready.hasPrefix("ready: "), "\(ready)")
        let ids = ready.dropFirst(7).split(separator: " ").compactMap { UInt64($0) }.map(ConsumerID.init(rawValue:))
        #expect(ids.count == 3)
        #expect(eventually { disk.served > 20 }, "requests are flowing")
        #expect(disk.consumers == Set(ids))

        consumer.signal(SIGKILL)
        #expect(try consumer.wait() == 128 + SIGKILL)
        #expect(eventually { disk.consumers.isEmpty }, "the provider noticed the consumer's end")
        #expect(disk.closes.sorted { $0.rawValue < $1.rawValue } == ids, "one close per open, no more")
        try provider.destroyDevice("disk")  // no consumer is left holding it
    }

    @Test func aProviderKilledMidRequestFailsEachRequestOnce() throws {
        let directory = temporaryContainerDirectory()
        let server = try ChildProcess(
            try modelessPath(), ["serve", "memory-disk", "--container", "victim", "--delay-ms", "3", "--blocks", "64"],
            environment: ["MODELESS_CONTAINER_DIR": directory.path])
        let started = try #require(server.readLine())
        #expect(started.hasPrefix("serving victim/blk0"), "\(started)")

        let consumer = try LogicalContainer(name: "client", directory: directory, serving: false)
        defer { consumer.shutdown() }
        let handles = try (0..<2).map { _ in try consumer.open("victim/blk0") }
        let outcomes = Outcomes()
        var chains: [ParameterChain] = []
        for (h, handle) in handles.enumerated() {
            for index in 0..<64 {
                let chain = try ParameterChain(blocks: 1, inputCapacity: 16, outputCapacity: 512)
                chains.append(chain)
                let block = try chain.claimBlock()
                try BlockRequest.prepareRead(block, first: UInt64(index), count: 1)
                try consumer.send(handle, block, context: h * 1000 + index) { result, context in
                    outcomes.record(context, result.map { _ in () })
                }
            }
        }
        // Synchronous requests on another thread meanwhile, until one fails.
        let synchronousFailure = Outcomes()
        let syncThread = try SystemThread(name: "sync-reader") {
            do {
                let block = try ParameterChain(blocks: 1, inputCapacity: 16, outputCapacity: 512).claimBlock()
                while true {
                    try BlockRequest.prepareRead(block, first: 0, count: 1)
                    try consumer.send(handles[0], block)
                }
            } catch {
                synchronousFailure.record(0, .failure(error as! LogicalDeviceError))
            }
        }
        #expect(eventually { outcomes.count >= 5 }, "some requests finished before the kill")
        server.signal(SIGKILL)
        #expect(try server.wait() == 128 + SIGKILL)

        #expect(eventually { outcomes.count == 128 }, "every request finished or failed")
        syncThread.join()
        let results = outcomes.all
        #expect(results.count == 128 && results.values.allSatisfy { $0.count == 1 }, "each exactly once")
        let failures = results.values.compactMap { if case .failure(let error) = $0[0] { error } else { nil } }
        #expect(!failures.isEmpty && failures.allSatisfy { $0.kind == .providerTerminated })
        if case .failure(let error) = synchronousFailure.all[0]?.first {
            #expect(error.kind == .providerTerminated)
        } else {
            Issue.record("the synchronous reader did not fail")
        }
        let later = try ParameterChain(blocks: 1, inputCapacity: 16, outputCapacity: 512).claimBlock()
        try BlockRequest.prepareRead(later, first: 0, count: 1)
        for handle in handles {
            #expect(kind { try consumer.send(handle, later) } == .providerTerminated, "later requests fail too")
            #expect(kind { try consumer.send(handle, later, context: ()) { _, _ in } } == .providerTerminated)
            try consumer.close(handle)
        }
        #expect(ContainerRegistry(directory: directory).runningContainers().isEmpty, "the dead container is not listed")
        let successor = try LogicalContainer(name: "victim", directory: directory)  // its name is free again
        successor.shutdown()
    }

    @Test func aConsumerProcessReportsItsProviderEnding() throws {
        let directory = temporaryContainerDirectory()
        let environment = ["MODELESS_CONTAINER_DIR": directory.path]
        let server = try ChildProcess(try modelessPath(), ["serve", "memory-disk", "--container", "short", "--delay-ms", "1"], environment: environment)
        #expect(server.readLine()?.hasPrefix("serving short/blk0") == true)

        let devices = try ChildProcess(try modelessPath(), ["devices", "--json"], environment: environment)
        var listing = ""
        while let line = devices.readLine() { listing += line + "\n" }
        #expect(try devices.wait() == 0)
        #expect(listing.contains("\"short/blk0\""), "\(listing)")

        let consumer = try ChildProcess(try modelessPath(), ["consume", "short/blk0", "--seconds", "3"], environment: environment)
        #expect(consumer.readLine()?.hasPrefix("ready") == true)
        usleep(200_000)
        server.signal(SIGKILL)
        let summary = consumer.readLine(timeout: 20) ?? ""
        #expect(try consumer.wait() == 1)
        #expect(summary.contains("failed") && summary.contains("has ended"), "\(summary)")
    }
}

