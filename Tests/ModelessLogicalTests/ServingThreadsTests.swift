import ModelessLogical
import ModelessSystem
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The threads that serve a container's connections: a handler that blocks holds up its own
/// connection only, and a connection's messages are answered in the order they came.
@Suite("Logical devices: the threads serving a container")
struct ServingThreadsTests {
    /// Control codes of the gated device.
    static let waitAtGate: UInt32 = 1
    static let answerAtOnce: UInt32 = 2

    @Test(arguments: [RequestTransport.standard, .socket, RequestTransport(sharedMemory: true, spin: .zero)])
    func blockedHandlersHoldUpOnlyTheirOwnConnections(transport: RequestTransport) throws {
        let directory = temporaryContainerDirectory()
        let provider = try LogicalContainer(name: "gates", directory: directory, transport: transport)
        defer { provider.shutdown() }
        let gate = Gate()
        defer { gate.open() }  // on every path, so that the shutdown above is not kept waiting
        try provider.createDevice("gated", handlers: LogicalDeviceHandlers(request: { context in
            if context.block.code == Self.waitAtGate { gate.pass() }
        }))
        let consumer = try LogicalContainer(name: "waiter", directory: directory, serving: false, transport: transport)
        defer { consumer.shutdown() }

        let blocked = 20
        let handles = try (0..<blocked).map { _ in try consumer.open("gates/gated") }
        let finished = Outcomes()
        let threads = try handles.enumerated().map { number, handle in
            try SystemThread(name: "gated-\(number)") {
                do {
                    let block = try ParameterChain(blocks: 1, inputCapacity: 0, outputCapacity: 0).claimBlock()
                    block.requestType = .control
                    block.code = Self.waitAtGate
                    try consumer.send(handle, block)
                    finished.record(number, .success(()))
                } catch {
                    finished.record(number, .failure(error as? LogicalDeviceError ?? LogicalDeviceError(.requestFailed, "\(error)")))
                }
            }
        }
        try #require(eventually { gate.waiting == blocked }, "every blocked request reached its handler: \(gate.waiting)")

        // Meanwhile a new connection opens, and its request and an asynchronous one are answered.
        let others = Outcomes()
        let other = try SystemThread(name: "ungated") {
            do {
                let handle = try consumer.open("gates/gated")
                let block = try ParameterChain(blocks: 1, inputCapacity: 0, outputCapacity: 0).claimBlock()
                block.requestType = .control
                block.code = Self.answerAtOnce
                try consumer.send(handle, block)
                try consumer.send(handle, block, context: 0) { result, _ in others.record(0, result.map { _ in () }) }
                try consumer.close(handle)  // after the asynchronous request completes
            } catch {
                others.record(1, .failure(error as? LogicalDeviceError ?? LogicalDeviceError(.requestFailed, "\(error)")))
            }
        }
        try #require(eventually { others.count == 1 }, "a connection was served while \(blocked) handlers were blocked")
        other.join()
        #expect(others.all[0]?.count == 1, "\(others.all)")
        #expect(finished.count == 0, "the blocked requests are still blocked")

        gate.open()
        for thread in threads { thread.join() }
        #expect(finished.count == blocked)
        #expect(finished.all.values.allSatisfy { if case .success = $0[0] { true } else { false } })
        for handle in handles { try consumer.close(handle) }
    }

    /// Many connections at once, each with its own shared channel, every request answered:
    /// the pool's threads are woken by each channel's doorbell and by its socket apart, so a
    /// ring taken by a thread that finds the connection busy must still be served. Without
    /// spinning every hand-off rings; with the standard spin most do not.
    @Test(arguments: [RequestTransport.standard, RequestTransport(sharedMemory: true, spin: .zero)])
    func everyRingOnManySharedChannelsIsAnswered(transport: RequestTransport) throws {
        let directory = temporaryContainerDirectory()
        let provider = try LogicalContainer(name: "rings", directory: directory, transport: transport)
        defer { provider.shutdown() }
        let answered = Outcomes()
        try provider.createDevice("echo", handlers: LogicalDeviceHandlers(request: { _ in }))
        let consumer = try LogicalContainer(name: "ringer", directory: directory, serving: false, transport: transport)
        defer { consumer.shutdown() }
        let connections = 8, requests = 2_000
        let threads = try (0..<connections).map { number in
            try SystemThread(name: "ringer-\(number)") {
                do {
                    let handle = try consumer.open("rings/echo")
                    let block = try ParameterChain(blocks: 1, inputCapacity: 8, outputCapacity: 8).claimBlock()
                    block.requestType = .control
                    for _ in 0..<requests { try consumer.send(handle, block) }
                    try consumer.close(handle)
                    answered.record(number, .success(()))
                } catch {
                    answered.record(number, .failure(error as? LogicalDeviceError ?? LogicalDeviceError(.requestFailed, "\(error)")))
                }
            }
        }
        try #require(eventually(seconds: 120) { answered.count == connections }, "connections done: \(answered.count) of \(connections)")
        for thread in threads { thread.join() }
        #expect(answered.all.values.allSatisfy { if case .success = $0[0] { true } else { false } }, "\(answered.all)")
    }

    /// Asynchronous requests on one connection come back in the order they were sent, however
    /// many threads serve the container, and a long stream of them does not stall.
    @Test func aConnectionsRequestsAreAnsweredInOrder() throws {
        let directory = temporaryContainerDirectory()
        let provider = try LogicalContainer(name: "ordered", directory: directory)
        defer { provider.shutdown() }
        let seen = SeenOrder()
        try provider.createDevice("log", handlers: LogicalDeviceHandlers(request: { context in
            seen.append(Int(context.block.code))
        }))
        let consumer = try LogicalContainer(name: "sender", directory: directory, serving: false)
        defer { consumer.shutdown() }
        let handle = try consumer.open("ordered/log")
        let completed = SeenOrder()
        let count = 2_000
        let sent = Outcomes()
        let sender = try SystemThread(name: "ordered-sender") {
            do {
                for index in 0..<count {
                    // 8 KiB each way: far more in flight than the socket holds, so that sending
                    // waits for the consumer's wait thread to take answers off it.
                    let block = try ParameterChain(blocks: 1, inputCapacity: 4096, outputCapacity: 4096).claimBlock()
                    block.requestType = .control
                    block.code = UInt32(index)
                    try consumer.send(handle, block, context: index) { _, index in
                        if index == 0 { usleep(100_000) }  // answers pile up meanwhile, and the provider's sends wait
                        completed.append(index)
                    }
                }
                try consumer.close(handle)  // waits for the requests in flight
                sent.record(0, .success(()))
            } catch {
                sent.record(0, .failure(error as? LogicalDeviceError ?? LogicalDeviceError(.requestFailed, "\(error)")))
            }
        }
        // A stall fails here; the shutdowns deferred above then end it.
        try #require(eventually(seconds: 30) { sent.count == 1 }, "\(completed.values.count) of \(count) completed: the stream stalled")
        sender.join()
        if case .failure(let error)? = sent.all[0]?.first { Issue.record("the stream failed: \(error)") }
        #expect(seen.values == Array(0..<count), "the handler saw them in order")
        #expect(completed.values == Array(0..<count), "and they completed in order")
    }
}

/// Holds handler calls until opened, counting those waiting.
private final class Gate: @unchecked Sendable {
    private let lock = ConditionLock()
    private var isOpen = false
    private var waiters = 0

    var waiting: Int { lock.withLock { waiters } }

    func pass() {
        lock.withLock {
            waiters += 1
            while !isOpen { lock.wait() }
            waiters -= 1
        }
    }

    func open() {
        lock.withLock {
            isOpen = true
            lock.broadcast()
        }
    }
}

/// Numbers appended from any thread, in the order they came.
private final class SeenOrder: @unchecked Sendable {
    private let lock = ConditionLock()
    private var seen: [Int] = []

    func append(_ value: Int) { lock.withLock { seen.append(value) } }
    var values: [Int] { lock.withLock { seen } }
}
