import InMemoryLogging
import Logging
import ModelessLogical
import ModelessSystem
import Testing
@testable import ModelessSupervision

#if canImport(Glibc)
import Glibc
#endif

func modelessPath() throws -> String { try ProgramRunner.builtProgram("modeless") }

/// Polls `condition` for up to `seconds`.
func eventually(seconds: Double = 20, _ condition: () -> Bool) -> Bool {
    let deadline = monotonicNanoseconds() + UInt64(seconds * 1e9)
    while monotonicNanoseconds() < deadline {
        if condition() { return true }
        usleep(5_000)
    }
    return condition()
}

/// Supervisors running real provider processes (`modeless serve`), killed with SIGKILL.
@Suite("Supervision: instances that die", .serialized)
struct SupervisorTests {
    let root = temporaryDirectory()
    var containers: ContainerDirectory { ContainerDirectory(path: root + "/c") }

    func configuration(_ command: [String], instances: Int = 1, startAttempts: Int = 5,
                       environment: [String: String] = [:]) throws -> SupervisorConfiguration {
        SupervisorConfiguration(service: "svc", instances: instances, command: [try modelessPath()] + command,
                                stateDirectory: root + "/state", startAttempts: startAttempts, environment: environment)
    }

    @Test func aKilledInstanceIsRestartedUnderItsNameAndTheCauseIsLogged() throws {
        let records = InMemoryLogHandler()
        let supervisor = try Supervisor(try configuration(["serve", "memory-disk", "--device", "disk"], instances: 2), containers: containers,
                                        logger: Logger(label: "test", factory: { _ in records }))
        try supervisor.start()
        defer { supervisor.stop() }
        #expect(supervisor.waitUntilServing(seconds: 30))
        let victim = try #require(supervisor.instances[1].processID)
        kill(victim, SIGKILL)
        #expect(eventually { supervisor.instances[1].restarts == 1 && supervisor.instances[1].phase == .serving })
        #expect(supervisor.instances[1].processID != victim)
        #expect(supervisor.instances[1].lastCause == "killed by SIGKILL")
        #expect(supervisor.instances[0].restarts == 0, "the other instance is its own fault domain")

        let status = try SupervisorStatus.read(stateDirectory: root + "/state")
        #expect(status.instances.map(\.name) == ["svc-0", "svc-1"])
        #expect(status.instances[1].restarts == 1)
        let log = try FileAccess.readText(root + "/state/supervisor.log")
        #expect(log.contains("notice svc-1: died (killed by SIGKILL)"), "\(log)")
        // The same events went to the logger passed in, with their level and the instance in the metadata.
        let died = records.entries.filter { $0.message.description.hasPrefix("died (killed by SIGKILL); restarting") }
        #expect(died.count == 1, "\(records.entries)")
        #expect(died.first?.level == .notice)
        #expect(died.first?.metadata["instance"] == "svc-1")
        #expect(died.first?.metadata["service"] == "svc")
        let serving = records.entries.filter { $0.message.description == "serving" }.compactMap { $0.metadata["instance"]?.description }
        #expect(serving.sorted() == ["svc-0", "svc-1", "svc-1"], "\(records.entries)")
        #expect(records.entries.allSatisfy { $0.level == .info || $0.level == .notice }, "\(records.entries)")
        // The restarted instance serves again under its name, and a consumer can reach it.
        let consumer = try LogicalContainer(name: "reader", directory: containers, serving: false)
        let handle = try consumer.open("svc-1/disk")
        try consumer.close(handle)

        let shown = try ProgramRunner.run(try modelessPath(), ["status", "svc", "--state-dir", root + "/state"])
        #expect(shown.status == 0)
        #expect(shown.output.contains("svc-1") && shown.output.contains("killed by SIGKILL"), "\(shown.output)")
    }

    @Test func anInstanceThatCannotStartIsGivenUpOn() throws {
        let records = InMemoryLogHandler()
        let supervisor = try Supervisor(
            try configuration(["serve", "nvme", "--model", root + "/no/such/dir/disk.img"], startAttempts: 2), containers: containers,
            logger: Logger(label: "test", factory: { _ in records }))
        try supervisor.start()
        defer { supervisor.stop() }
        #expect(eventually { supervisor.instances[0].phase == .failed })
        #expect(supervisor.instances[0].lastCause == "exited with status 1")
        // The phase is published first, the report written just after, outside the lock.
        func givingUpLogged() -> Bool {
            let log = FileAccess.readTextIfPresent(root + "/state/supervisor.log") ?? ""
            return log.split(separator: "\n").contains { $0.contains(" error svc-0: ") && $0.contains("giving up") }
        }
        #expect(eventually { givingUpLogged() }, "\(FileAccess.readTextIfPresent(root + "/state/supervisor.log") ?? "no log")")
        let givenUp = records.entries.filter { $0.level == .error }
        #expect(givenUp.count == 1 && givenUp[0].message.description.contains("giving up") && givenUp[0].metadata["instance"] == "svc-0",
                "\(records.entries)")
    }

    @Test func badConfigurationsAreRefusedWithTheReason() throws {
        #expect(throws: SupervisionError.self) { try Supervisor(try configuration(["serve", "memory-disk"], instances: 0), containers: containers) }
        #expect(throws: SupervisionError.self) {
            try Supervisor(try configuration(["serve", "memory-disk", "--container", "x"]), containers: containers)
        }
        let file = root + "/bad.json"
        try FileAccess.replaceFile(file, with: Array(#"{"service": "svc"}"#.utf8))
        let result = try ProgramRunner.run(try modelessPath(), ["supervise", file])
        #expect(result.status != 0)
        #expect(result.output.contains("command"), "\(result.output)")
    }

    /// The provider kills itself right after recording a write and before replying, so the
    /// consumer sends the write again: it must be answered from the ledger, not run twice.
    @Test(arguments: [1, 2])
    func writesAreExecutedOnceAcrossCrashesBetweenRecordAndReply(instances: Int) throws {
        let supervisor = try Supervisor(
            try configuration(["serve", "nvme", "--model", root + "/disk.img", "--model-blocks", "256", "--irq", "poll", "--device", "disk"],
                              instances: instances, environment: ["MODELESS_CRASH_AFTER_RECORD": "3"]),
            containers: containers)
        try supervisor.start()
        defer { supervisor.stop() }
        #expect(supervisor.waitUntilServing(seconds: 30))
        let consumer = try LogicalContainer(name: "writer", directory: containers, serving: false)
        let client = ServiceClient(container: consumer, instances: supervisor.configuration.instanceNames, device: "disk")
        let failovers = Failovers()
        client.onFailover = { failovers.add($0) }
        for block in 0..<10 {
            let chain = try ParameterChain(capacities: [.init(input: 16 + 512, output: 0)])
            let request = try chain.claimBlock()
            try BlockRequest.prepareWrite(request, first: UInt64(block), data: [UInt8](repeating: UInt8(block + 1), count: 512), blockSize: 512)
            try client.send(request)
        }
        client.close()
        #expect(failovers.count == 3, "the 3rd, 6th and 9th writes were recorded and then their instance died")
        var totals = SupervisedInstance.Counters()
        for path in SupervisedInstance.stateFiles(in: root + "/state") {
            let state = try InstanceStateFile(path: path, readOnly: true)
            let counters = try #require(state.record.load().flatMap(SupervisedInstance.decode))
            totals.executed += counters.executed
            totals.replayed += counters.replayed
        }
        #expect(totals == .init(executed: 10, replayed: 3), "each write ran once; the three sent again came from a ledger")
        let disk = try SharedMemoryFile(path: root + "/disk.img", size: 256 * 512, readOnly: true)
        for block in 0..<10 { #expect(disk.read(at: block * 512, count: 512) == [UInt8](repeating: UInt8(block + 1), count: 512)) }
    }

    /// The failover workload against the NVMe model: 100 SIGKILLs at random points.
    @Test(arguments: [1, 2])
    func aHundredKillsUnderWriteThenVerifyOnTheNVMeModel(instances: Int) throws {
        let config = root + "/service.json"
        let command = #"["modeless", "serve", "nvme", "--model", "\#(root)/disk.img", "--model-blocks", "2048", "--irq", "poll", "--device", "disk"]"#
        try FileAccess.replaceFile(config, with: Array("""
            {"service": "svc", "instances": \(instances), "stateDirectory": "\(root)/state", "command": \(command)}
            """.utf8))
        let run = try ChildProcess(try modelessPath(), ["bench", "failover", "--config", config, "--device", "disk", "--destructive", "--kills", "100",
                                                        "--blocks", "512", "--max-delay-ms", "30"],
                                   environment: ["MODELESS_CONTAINER_DIR": containers.path])
        var output: [String] = []
        while let line = run.readLine(timeout: 300) { output.append(line) }
        #expect(try run.wait() == 0, "\(output.joined(separator: "\n"))")
        #expect(output.contains { $0.hasPrefix("kills:") && $0.contains("100 of 100") }, "\(output.joined(separator: "\n"))")
        #expect(output.contains { $0.hasPrefix("ok: every write acknowledged once") })
    }
}

final class Failovers: @unchecked Sendable {
    private let lock = ConditionLock()
    private var events: [ServiceClient.Failover] = []
    func add(_ event: ServiceClient.Failover) { lock.withLock { events.append(event) } }
    var count: Int { lock.withLock { events.count } }
}
