@testable import ModelessLogical
import ModelessSystem
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A server thread that lets go of a connection rearms its socket just after, and another
/// thread may meanwhile take the connection, see its end and release it; the descriptor
/// number then goes to the next connection. With the server's let-go delay widening both
/// windows, connections opened, used and closed one after another from several threads all
/// finish, and the provider is left with none: no rearm lands on a later connection's
/// descriptor under an ended one's token (which drops that connection's events for good).
@Suite("Logical devices: a connection ends after the rearms of those that let it go")
struct ConnectionRearmTests {
    static let threads = 4
    static let connectionsPerThread = 150

    @Test(arguments: [RequestTransport.socket, .standard])
    func connectionsOneAfterAnotherAllFinish(_ transport: RequestTransport) throws {
        let directory = temporaryContainerDirectory()
        let provider = try LogicalContainer(name: "rearm", directory: directory)
        defer { provider.shutdown() }
        let disk = MemoryDiskProvider(blockCount: 8)
        try provider.createDevice("disk", handlers: disk.handlers)
        let server = try #require(provider.containerServer)
        server.letGoDelayMicroseconds.store(2_000, ordering: .relaxed)

        let finished = Atomic<Int>(0)
        let failures = Outcomes()
        let workers = try (0..<Self.threads).map { number in
            try SystemThread(name: "rearm-\(number)") {
                do {
                    let consumer = try LogicalContainer(name: "c\(number)", directory: directory, serving: false, transport: transport)
                    defer { consumer.shutdown() }
                    let chain = try ParameterChain(blocks: 1, inputCapacity: 16, outputCapacity: 512)
                    for _ in 0..<Self.connectionsPerThread {
                        let handle = try consumer.open("rearm/disk")
                        chain.reset()
                        let block = try chain.claimBlock()
                        try BlockRequest.prepareRead(block, first: 1, count: 1)
                        try consumer.send(handle, block)
                        try consumer.close(handle)
                        finished.add(1, ordering: .relaxed)
                    }
                } catch {
                    failures.record(number, .failure(LogicalDeviceError.from(error)))
                }
            }
        }
        // A lost event leaves a consumer waiting for an answer for good: judged by the count,
        // not by joining (a hung thread would hang the test).
        let total = Self.threads * Self.connectionsPerThread
        let done = eventually(seconds: 60) { finished.load(ordering: .relaxed) == total || failures.count > 0 }
        #expect(done && failures.count == 0, "\(finished.load(ordering: .relaxed)) of \(total) connections finished; failures: \(failures.all)")
        guard done else { return }
        for worker in workers { worker.join() }
        #expect(eventually { server.connectionCount == 0 }, "the provider still holds \(server.connectionCount) connection(s)")
    }
}
