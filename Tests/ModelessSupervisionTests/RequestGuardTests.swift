import ModelessLogical
import ModelessSystem
import Testing
@testable import ModelessSupervision

/// Counts how often its requests run.
final class CountingDisk: @unchecked Sendable {
    private let lock = ConditionLock()
    private var runs: [RequestType: Int] = [:]
    var failWrites = false

    var handlers: LogicalDeviceHandlers {
        LogicalDeviceHandlers(request: { context in
            let type = context.block.requestType!
            self.lock.withLock { self.runs[type, default: 0] += 1 }
            if type == .read { try context.block.output.setBytes([1, 2, 3, 4]) }
            if type == .write, self.failWrites { throw LogicalDeviceError(.requestFailed, "write refused") }
        })
    }

    func count(_ type: RequestType) -> Int { lock.withLock { runs[type] ?? 0 } }
}

@Suite("Supervision: requests sent again execute once")
struct RequestGuardTests {
    let directory = temporaryDirectory()

    func instance(_ name: String) throws -> SupervisedInstance {
        try SupervisedInstance(name: name, statePath: directory + "/\(name).state", stateDirectory: directory)
    }

    /// Instance `name` serving `disk` as `disk` behind its request guard, in a container of
    /// the same name, opened once.
    func guarded(_ name: String, _ disk: CountingDisk) throws -> (SupervisedInstance, LogicalContainer, LogicalDeviceHandle) {
        let guardian = try instance(name)
        let container = try LogicalContainer(name: name, directory: ContainerDirectory(path: directory), serving: false)
        try container.createDevice("disk", handlers: guardian.guarding(disk.handlers))
        return (guardian, container, try container.open("disk"))
    }

    func send(_ container: LogicalContainer, _ handle: LogicalDeviceHandle, _ type: RequestType, id: UInt64, reissued: Bool) throws -> ParameterBlock {
        let chain = try ParameterChain(capacities: [.init(input: 16, output: 16)])
        let block = try chain.claimBlock()
        block.requestType = type
        block.requestID = id
        if reissued { block.flags = [.reissued] }
        try container.send(handle, block)
        return block
    }

    @Test func aReissuedWriteRecordedAsDoneIsAnsweredWithoutRunning() throws {
        let disk = CountingDisk()
        let (guardian, container, handle) = try guarded("svc-0", disk)
        _ = try send(container, handle, .write, id: 7, reissued: false)
        _ = try send(container, handle, .write, id: 7, reissued: true)
        #expect(disk.count(.write) == 1, "the write sent again did not run again")
        #expect(guardian.totals == .init(executed: 1, replayed: 1))
        // Not marked as sent again: a new request that happens to reuse the id runs.
        _ = try send(container, handle, .write, id: 7, reissued: false)
        #expect(disk.count(.write) == 2)
        // A request without an id is never looked up.
        _ = try send(container, handle, .write, id: 0, reissued: true)
        #expect(disk.count(.write) == 3)
    }

    @Test func aReissuedRequestWithOutputRunsAgain() throws {
        let disk = CountingDisk()
        let (_, container, handle) = try guarded("svc-0", disk)
        _ = try send(container, handle, .read, id: 9, reissued: false)
        let again = try send(container, handle, .read, id: 9, reissued: true)
        #expect(disk.count(.read) == 2, "a reply with output cannot come from the ledger")
        #expect(again.output.bytes == [1, 2, 3, 4])
    }

    @Test func aRecordedFailureIsAnsweredAsTheSameFailure() throws {
        let disk = CountingDisk()
        disk.failWrites = true
        let (_, container, handle) = try guarded("svc-0", disk)
        #expect(throws: LogicalDeviceError.self) { _ = try send(container, handle, .write, id: 11, reissued: false) }
        disk.failWrites = false
        let error = #expect(throws: LogicalDeviceError.self) { _ = try send(container, handle, .write, id: 11, reissued: true) }
        #expect(error?.kind == .requestFailed)
        #expect(disk.count(.write) == 1)
    }

    @Test func aSiblingAnswersFromTheDeadInstancesLedger() throws {
        let (_, first, deadHandle) = try guarded("svc-0", CountingDisk())
        _ = try send(first, deadHandle, .write, id: 21, reissued: false)

        let survivorDisk = CountingDisk()
        let (survivor, second, handle) = try guarded("svc-1", survivorDisk)
        _ = try send(second, handle, .write, id: 21, reissued: true)
        _ = try send(second, handle, .write, id: 22, reissued: true)
        #expect(survivorDisk.count(.write) == 1, "21 came from svc-0's ledger; 22 was never recorded, so it ran")
        #expect(survivor.totals == .init(executed: 1, replayed: 1))
    }
}
