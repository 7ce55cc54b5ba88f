import InMemoryLogging
import Logging
import ModelessLogical
import ModelessSystem
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A serving container logs to the `Logger` it is given, not to a global one.
@Suite("Logical devices: the container server's log")
struct ContainerServerLoggingTests {
    @Test func connectionsAreLoggedAtDebugWithTheContainerAndThePeer() throws {
        let directory = temporaryContainerDirectory()
        var records = InMemoryLogHandler()
        records.logLevel = .debug
        let provider = try LogicalContainer(name: "storage", directory: directory, logger: Logger(label: "test", factory: { _ in records }))
        try provider.createDevice("blk0", handlers: MemoryDiskProvider(blockCount: 4).handlers)
        #expect(records.entries.map(\.message.description) == ["serving"])
        #expect(records.entries.first?.metadata["socket"]?.description == directory.socketPath("storage"))

        let consumer = try LogicalContainer(name: "reader", directory: directory, serving: false)
        let handle = try consumer.open("storage/blk0")
        try consumer.close(handle)
        consumer.shutdown()
        #expect(eventually { records.entries.contains { $0.message.description == "connection ended" } }, "\(records.entries)")
        provider.shutdown()

        let accepted = records.entries.filter { $0.message.description == "connection accepted" }
        #expect(accepted.count >= 1, "\(records.entries)")
        #expect(accepted.allSatisfy { $0.level == .debug && $0.metadata["pid"]?.description == "\(getpid())" })
        #expect(records.entries.allSatisfy { $0.metadata["container"] == "storage" }, "\(records.entries)")
        #expect(records.entries.last?.message.description == "stopped", "\(records.entries)")
        #expect(!records.entries.contains { $0.level > .debug }, "nothing went wrong: \(records.entries)")
    }

}
