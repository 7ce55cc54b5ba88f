import ModelessLogical
import ModelessSystem
import Testing
@testable import ModelessSupervision

#if canImport(Glibc)
import Glibc
#endif

/// A warm standby (``SupervisorConfiguration/standby``): started once the instance serves,
/// it becomes the instance the moment the serving process dies, without the restart delay.
@Suite("Supervision: warm standby", .serialized)
struct StandbyTests {
    let root = temporaryDirectory()
    var containers: ContainerDirectory { ContainerDirectory(path: root + "/c") }

    /// A provider that serves while it holds an exclusive lock on `lock`: a standby
    /// (`MODELESS_STANDBY=1`) says it waits, then blocks on the lock as the NVMe ublk server
    /// blocks on its claim.
    func configuration(standby: Bool, restartDelaySeconds: Double) -> SupervisorConfiguration {
        let script = """
            [ "$MODELESS_STANDBY" = 1 ] && echo "standby waiting (pid $$)"
            exec 9>>\(root)/claim.lock
            flock 9
            echo "serving (pid $$)"
            exec sleep 1000
            """
        return SupervisorConfiguration(
            service: "svc", command: ["/bin/sh", "-c", script, "provider"], stateDirectory: root + "/state",
            restartDelaySeconds: restartDelaySeconds, restartMaxDelaySeconds: restartDelaySeconds, startLimitBurst: 0, standby: standby)
    }

    /// The pids of the standbys the supervisor's log says it started.
    func standbysStarted() -> [pid_t] {
        let log = FileAccess.readTextIfPresent(root + "/state/supervisor.log") ?? ""
        return log.split(separator: "\n").compactMap { line in
            let words = line.split(separator: " ")
            guard let at = words.firstIndex(of: "started"), at > 0, words[at - 1] == "standby", at + 2 < words.count,
                  words[at + 1] == "(pid" else { return nil }
            return pid_t(words[at + 2].prefix { $0.isNumber })
        }
    }

    @Test func theStandbyTakesOverAtOnceAndANewOneIsStarted() throws {
        // A plain restart would wait 30 s: the takeover must not.
        let supervisor = try Supervisor(configuration(standby: true, restartDelaySeconds: 30), containers: containers)
        try supervisor.start()
        defer { supervisor.stop() }
        #expect(supervisor.waitUntilServing(seconds: 30))
        #expect(eventually { standbysStarted().count == 1 })
        let standby = try #require(standbysStarted().first)
        let first = try #require(supervisor.instances[0].processID)
        #expect(standby != first)

        kill(first, SIGKILL)
        #expect(eventually(seconds: 10) { supervisor.instances[0].processID == standby && supervisor.instances[0].phase == .serving })
        #expect(supervisor.instances[0].restarts == 1)
        #expect(eventually { standbysStarted().count == 2 }, "a new standby once the promoted one serves")
        let log = FileAccess.readTextIfPresent(root + "/state/supervisor.log") ?? ""
        #expect(log.contains("its standby (pid \(standby)) takes over"), "\(log)")

        // The standby is stopped with the service: nothing is left.
        supervisor.stop()
        for pid in [standby] + standbysStarted() { #expect(kill(pid, 0) != 0, "pid \(pid) ended") }
    }

    @Test func withoutAStandbyTheRestartDelayApplies() throws {
        let supervisor = try Supervisor(configuration(standby: false, restartDelaySeconds: 2), containers: containers)
        try supervisor.start()
        defer { supervisor.stop() }
        #expect(supervisor.waitUntilServing(seconds: 30))
        let first = try #require(supervisor.instances[0].processID)
        let killed = monotonicNanoseconds()
        kill(first, SIGKILL)
        #expect(eventually(seconds: 20) { supervisor.instances[0].phase == .serving && supervisor.instances[0].processID != first })
        #expect(monotonicNanoseconds() - killed >= 2_000_000_000)
        #expect(standbysStarted().isEmpty)
    }

    @Test func aStandbyThatDiesIsReplaced() throws {
        let supervisor = try Supervisor(configuration(standby: true, restartDelaySeconds: 30), containers: containers)
        try supervisor.start()
        defer { supervisor.stop() }
        #expect(supervisor.waitUntilServing(seconds: 30))
        #expect(eventually { standbysStarted().count == 1 })
        let standby = try #require(standbysStarted().first)
        let serving = supervisor.instances[0].processID
        kill(standby, SIGKILL)
        #expect(eventually { standbysStarted().count == 2 }, "another standby a second later")
        #expect(supervisor.instances[0].processID == serving)
        #expect(supervisor.instances[0].phase == .serving)
    }
}
