import ModelessLogical
import ModelessSystem
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A provider process (`modeless serve memory-disk`) opened and closed many times over, one
/// connection after another and a thousand at once: once the connections have ended it holds
/// what it held before (memory, mappings, threads, descriptors), is still listed, and still
/// answers.
///
/// `MODELESS_SOAK_CONNECTIONS` sets the number of sequential connections (20,000 unless set;
/// the long run is 200,000).
@Suite("Logical devices: connections over a provider's life", .serialized)
struct ConnectionLifetimeTests {
    static let defaultSequential = 20_000
    static let concurrent = 1_000
    /// How far each figure may end above where it started: a connection's own cost times the
    /// connection count is far beyond every bound (a thread per connection left behind adds a
    /// thread, two mappings and about 20 KiB each).
    static let threadSlack = 2
    static let descriptorSlack = 2
    static let mappingSlack = 32
    static let residentSlackKiB = 8 * 1024
    /// Threads the provider may run while a thousand idle connections are open: the pool,
    /// not a thread per connection.
    static let threadsWhileOpen = 64

    static var sequential: Int {
        guard let text = getenv("MODELESS_SOAK_CONNECTIONS").map({ String(cString: $0) }), !text.isEmpty else { return defaultSequential }
        guard let count = Int(text), count > 0 else {
            Issue.record("MODELESS_SOAK_CONNECTIONS must be a positive number of connections, not '\(text)'")
            return defaultSequential
        }
        return count
    }

    @Test func aProviderKeepsNothingOfConnectionsThatEnded() throws {
        raiseOpenFileLimit()
        let directory = temporaryContainerDirectory()
        let server = try ChildProcess(
            try modelessPath(), ["serve", "memory-disk", "--container", "soak", "--blocks", "64"],
            environment: ["MODELESS_CONTAINER_DIR": directory.path])
        defer {
            server.signal(SIGTERM)
            _ = try? server.wait()
        }
        #expect(server.readLine()?.hasPrefix("serving soak/blk0") == true)
        let soak = SoakConsumer(directory: directory)
        let shared = try LogicalContainer(name: "soak-shared", directory: directory, serving: false)
        let overSocket = try LogicalContainer(name: "soak-socket", directory: directory, serving: false, transport: .socket)
        defer {
            shared.shutdown()
            overSocket.shutdown()
        }
        try soak.writePattern(through: shared)

        // Warm up (the pool, the allocator's arenas), then take the baseline.
        try soak.openAndClose(500, shared: shared, overSocket: overSocket)
        _ = try soak.holdOpen(100, shared: shared, overSocket: overSocket, provider: server.processID)
        let before = try settledResources(server.processID)
        let descriptorsBefore = ProcessResources.descriptorTargets(of: server.processID)

        let count = Self.sequential
        let started = monotonicNanoseconds()
        try soak.openAndClose(count, shared: shared, overSocket: overSocket)
        let sequentialSeconds = Double(monotonicNanoseconds() - started) / 1e9
        let whileOpen = try soak.holdOpen(Self.concurrent, shared: shared, overSocket: overSocket, provider: server.processID)
        let seconds = Double(monotonicNanoseconds() - started) / 1e9
        let after = try settledResources(server.processID)
        print("""
            connection soak: \(count) sequential connections in \(tenths(sequentialSeconds)) s, \
            then \(Self.concurrent) open at once (\(whileOpen)), \(tenths(seconds)) s in all; \
            provider before: \(before); after: \(after); \
            its descriptors after: \(ProcessResources.descriptorTargets(of: server.processID).joined(separator: ", "))
            """)

        #expect(whileOpen.descriptors >= before.descriptors + Self.concurrent, "the connections were open at once: \(whileOpen)")
        #expect(whileOpen.threads <= before.threads + Self.threadsWhileOpen, "idle connections hold no thread: \(whileOpen)")
        #expect(after.threads <= before.threads + Self.threadSlack, "threads: \(before.threads) before, \(after.threads) after")
        #expect(after.descriptors <= before.descriptors + Self.descriptorSlack, """
            descriptors: \(before.descriptors) before, \(after.descriptors) after; before: \(descriptorsBefore); \
            after: \(ProcessResources.descriptorTargets(of: server.processID)); \
            the provider's listing: \(String(describing: try? ContainerRegistry(directory: directory).listing(of: "soak")))
            """)
        #expect(after.mappings <= before.mappings + Self.mappingSlack, "mappings: \(before.mappings) before, \(after.mappings) after")
        #expect(after.residentKiB <= before.residentKiB + Self.residentSlackKiB, "RSS: \(before.residentKiB) KiB before, \(after.residentKiB) KiB after")

        // Still listed, with every open closed, and still answering.
        let listing = try ContainerRegistry(directory: directory).listing(of: "soak")
        #expect(listing.processID == server.processID)
        #expect(listing.devices == [ContainerListing.Device(name: "blk0", consumers: 0)], "every open was closed once")
        let devices = try ChildProcess(try modelessPath(), ["devices", "--json"], environment: ["MODELESS_CONTAINER_DIR": directory.path])
        var listed = ""
        while let line = devices.readLine() { listed += line + "\n" }
        #expect(try devices.wait() == 0)
        #expect(listed.contains("\"soak/blk0\""), "\(listed)")
        try soak.openAndClose(2, shared: shared, overSocket: overSocket)
    }

    /// The provider's figures once its spare threads have ended: sampled until the thread
    /// count has held for well over the pool's idle time.
    private func settledResources(_ processID: Int32) throws -> ProcessResources {
        var last = try ProcessResources(of: processID)
        var steady = 0
        let deadline = monotonicNanoseconds() + 20_000_000_000
        while steady < 6 && monotonicNanoseconds() < deadline {
            usleep(250_000)
            let now = try ProcessResources(of: processID)
            steady = now.threads == last.threads && now.descriptors == last.descriptors ? steady + 1 : 0
            last = now
        }
        return last
    }

    private func tenths(_ seconds: Double) -> String { "\(Int(seconds))." + "\(Int(seconds * 10) % 10)" }

    /// A thousand connections need more descriptors than a soft limit of 1024 allows.
    private func raiseOpenFileLimit() {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
        limit.rlim_cur = limit.rlim_max
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    }
}

/// The consumer side of the soak: opens `soak/blk0`, reads a pattern back, closes.
private struct SoakConsumer {
    static let patternBlock: UInt64 = 5
    let directory: ContainerDirectory
    let pattern = (0..<512).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }

    func writePattern(through container: LogicalContainer) throws {
        let handle = try container.open("soak/blk0")
        let block = try ParameterChain(blocks: 1, inputCapacity: 16 + 512, outputCapacity: 0).claimBlock()
        try BlockRequest.prepareWrite(block, first: Self.patternBlock, data: pattern, blockSize: 512)
        try container.send(handle, block)
        try container.close(handle)
    }

    /// Reads the pattern's block synchronously on `handle` and checks it.
    func readBack(_ handle: LogicalDeviceHandle, in container: LogicalContainer, _ chain: ParameterChain) throws {
        chain.reset()
        let block = try chain.claimBlock()
        try BlockRequest.prepareRead(block, first: Self.patternBlock, count: 1)
        try container.send(handle, block)
        #expect(block.output.bytes == pattern)
    }

    /// Reads the pattern's block asynchronously (over a second connection) and checks it.
    func readBackAsynchronously(_ handle: LogicalDeviceHandle, in container: LogicalContainer, id: Int, into outcomes: Outcomes) throws {
        let block = try ParameterChain(blocks: 1, inputCapacity: 16, outputCapacity: 512).claimBlock()
        try BlockRequest.prepareRead(block, first: Self.patternBlock, count: 1)
        let expected = pattern
        try container.send(handle, block, context: id) { result, id in
            switch result {
            case .success(let block) where block.output.bytes == expected: outcomes.record(id, .success(()))
            case .success: outcomes.record(id, .failure(LogicalDeviceError(.requestFailed, "the pattern read back wrong")))
            case .failure(let error): outcomes.record(id, .failure(error))
            }
        }
    }

    /// `count` connections one after another: open, read, close. Every fourth is on the
    /// socket, every eighth also reads asynchronously (a second connection), and every
    /// hundredth is dropped by its container's shutdown instead of closed.
    func openAndClose(_ count: Int, shared: LogicalContainer, overSocket: LogicalContainer) throws {
        let chain = try ParameterChain(blocks: 1, inputCapacity: 16, outputCapacity: 512)
        let outcomes = Outcomes()
        var asynchronous = 0
        for index in 0..<count {
            if index % 100 == 99 {
                let brief = try LogicalContainer(name: "soak-brief", directory: directory, serving: false)
                try readBack(try brief.open("soak/blk0"), in: brief, chain)
                brief.shutdown()
                continue
            }
            let container = index % 4 == 3 ? overSocket : shared
            let handle = try container.open("soak/blk0")
            try readBack(handle, in: container, chain)
            if index % 8 == 0 {
                try readBackAsynchronously(handle, in: container, id: index, into: outcomes)
                asynchronous += 1
            }
            try container.close(handle)  // after the asynchronous read completes
        }
        let results = outcomes.all
        #expect(results.count == asynchronous && results.values.allSatisfy { $0.count == 1 }, "each asynchronous read completed once")
        #expect(results.values.allSatisfy { if case .success = $0[0] { true } else { false } }, "and read the pattern")
    }

    /// Opens `count` connections and holds them (half on the socket); then four threads read
    /// through each, synchronously and asynchronously, and close it. Returns the provider's
    /// figures while they were all open and idle.
    func holdOpen(_ count: Int, shared: LogicalContainer, overSocket: LogicalContainer, provider: Int32) throws -> ProcessResources {
        var handles: [(LogicalContainer, LogicalDeviceHandle)] = []
        for index in 0..<count {
            let container = index % 2 == 0 ? shared : overSocket
            handles.append((container, try container.open("soak/blk0")))
        }
        let whileOpen = try ProcessResources(of: provider)
        let outcomes = Outcomes()
        let failures = Outcomes()
        let threadCount = 4
        let opened = handles
        let consumer = self
        let threads = try (0..<threadCount).map { number in
            try SystemThread(name: "soak-\(number)") {
                do {
                    let chain = try ParameterChain(blocks: 1, inputCapacity: 16, outputCapacity: 512)
                    for index in stride(from: number, to: opened.count, by: threadCount) {
                        let (container, handle) = opened[index]
                        try consumer.readBack(handle, in: container, chain)
                        try consumer.readBackAsynchronously(handle, in: container, id: index, into: outcomes)
                    }
                    for index in stride(from: number, to: opened.count, by: threadCount) {
                        let (container, handle) = opened[index]
                        try container.close(handle)
                    }
                } catch {
                    failures.record(number, .failure(LogicalDeviceError.from(error)))
                }
            }
        }
        for thread in threads { thread.join() }
        #expect(failures.count == 0, "\(failures.all)")
        let results = outcomes.all
        #expect(results.count == count && results.values.allSatisfy { $0.count == 1 }, "each asynchronous read completed once")
        #expect(results.values.allSatisfy { if case .success = $0[0] { true } else { false } }, "and read the pattern")
        return whileOpen
    }
}

extension LogicalDeviceError {
    fileprivate static func from(_ error: any Error) -> LogicalDeviceError {
        error as? LogicalDeviceError ?? LogicalDeviceError(.requestFailed, String(describing: error))
    }
}
