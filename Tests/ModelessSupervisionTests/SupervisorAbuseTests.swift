import ModelessLogical
import ModelessSystem
import Testing
@testable import ModelessSupervision

#if canImport(Glibc)
import Glibc
#endif

/// The live processes started for the service whose state directory is `directory` (every
/// instance and whatever it started inherits `MODELESS_SERVICE_STATE_DIR`), with the
/// instance each belongs to.
func processesOfService(_ directory: String) -> [(pid: pid_t, instance: String, command: String)] {
    ProcessTable.processIDs().compactMap { pid in
        guard pid != getpid(), let entry = ProcessTable.entry(of: pid), !entry.isDead,
              let bytes = try? FileAccess.readBytes("/proc/\(pid)/environ") else { return nil }
        let variables = bytes.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        guard variables.contains("MODELESS_SERVICE_STATE_DIR=" + directory) else { return nil }
        let instance = variables.first { $0.hasPrefix("MODELESS_INSTANCE=") }.map { String($0.dropFirst(18)) } ?? "?"
        return (pid, instance, FileAccess.readTextIfPresent("/proc/\(pid)/comm") ?? "?")
    }
}

/// Kills what a failed test left behind, so that it does not hold the next one.
func killAll(_ processes: [(pid: pid_t, instance: String, command: String)]) {
    for process in processes { kill(process.pid, SIGKILL) }
}

/// Collects a supervisor's events.
final class EventLog: @unchecked Sendable {
    private let lock = ConditionLock()
    private var events: [Supervisor.Event] = []
    func add(_ event: Supervisor.Event) { lock.withLock { events.append(event) } }
    func count(_ prefix: String) -> Int { lock.withLock { events.filter { $0.message.hasPrefix(prefix) }.count } }
    var all: [String] { lock.withLock { events.map { "\($0.instance): \($0.message)" } } }
}

/// Instances that misbehave: leave children behind, serve and die at once, never serve; and
/// a supervisor killed with SIGKILL.
@Suite("Supervision: instances and supervisors that misbehave", .serialized)
struct SupervisorAbuseTests {
    let root = temporaryDirectory()
    var containers: ContainerDirectory { ContainerDirectory(path: root + "/c") }
    var state: String { root + "/state" }

    /// `script` run by `sh -c`, with `--container NAME` as `$1 $2`.
    func shell(_ script: String, useControlGroup: Bool = true, configure: (inout SupervisorConfiguration) -> Void = { _ in })
        -> SupervisorConfiguration {
        var configuration = SupervisorConfiguration(service: "svc", command: ["/bin/sh", "-c", script, "sh"], stateDirectory: state,
                                                    useControlGroup: useControlGroup)
        configure(&configuration)
        return configuration
    }

    /// Runs `supervisor.stop()` on another thread; the seconds it took, or nil if it had not
    /// returned after `limit` (then whatever the service left is killed so that it can return).
    func timedStop(_ supervisor: Supervisor, limit: Double) throws -> Double? {
        let done = EventLog()
        let began = monotonicNanoseconds()
        let thread = try SystemThread(name: "stop") {
            supervisor.stop()
            done.add(.init(instance: "", message: "stopped"))
        }
        let returned = eventually(seconds: limit) { done.count("stopped") == 1 }
        let took = Double(monotonicNanoseconds() - began) / 1e9
        if !returned { killAll(processesOfService(state)) }
        thread.join()
        return returned ? took : nil
    }

    /// An instance whose shell leaves a child that ignores SIGTERM (and, with a cgroup, one
    /// that also leaves the process group with setsid): a restart and a stop take all of its
    /// processes, and stop returns within 5 s.
    @Test(arguments: [true, false])
    func anInstanceThatLeavesChildrenBehindIsStoppedWhole(useControlGroup: Bool) throws {
        let escapee = useControlGroup && ControlGroup.current() != nil ? "setsid sh -c 'trap \"\" TERM; exec sleep 301' & " : ""
        let supervisor = try Supervisor(shell("(trap '' TERM; exec sleep 300) & \(escapee)echo \"serving $2\"; wait",
                                              useControlGroup: useControlGroup), containers: containers)
        try supervisor.start()
        #expect(supervisor.waitUntilServing(seconds: 20))
        let status = try SupervisorStatus.read(stateDirectory: state)
        #expect(status.containment == supervisor.containment.kind)
        if !useControlGroup { #expect(status.containment == "process-group") }
        #expect(eventually(seconds: 5) { processesOfService(state).count >= (escapee.isEmpty ? 2 : 3) })
        let first = processesOfService(state).map(\.pid)

        // Killing the shell restarts the instance, and its leftovers go with it.
        let leader = try #require(supervisor.instances[0].processID)
        kill(leader, SIGKILL)
        #expect(eventually(seconds: 10) { supervisor.instances[0].restarts == 1 && supervisor.instances[0].phase == .serving })
        #expect(eventually(seconds: 5) { Set(processesOfService(state).map(\.pid)).isDisjoint(with: first) },
                "processes of the killed run remain: \(processesOfService(state))")

        let took = try timedStop(supervisor, limit: 5)
        #expect(took != nil, "stop did not return within 5 s")
        #expect(processesOfService(state).isEmpty, "left running: \(processesOfService(state))")
        if case .controlGroup(let parent) = supervisor.containment { #expect(!FileAccess.exists(parent), "the service's cgroup is removed") }
    }

    /// An instance that says it serves and exits at once is started at most startLimitBurst
    /// times within startLimitIntervalSeconds, then is `failed`, shown so by `modeless status`.
    @Test func aServeThenExitLoopHitsTheStartLimitAndFails() throws {
        let supervisor = try Supervisor(shell("echo \"serving $2\"; sleep 0.05") { $0.startLimitBurst = 4 }, containers: containers)
        let events = EventLog()
        supervisor.onEvent = { events.add($0) }
        try supervisor.start()
        defer { supervisor.stop() }
        #expect(eventually(seconds: 10) { supervisor.instances[0].phase == .failed }, "\(events.all)")
        usleep(500_000)
        #expect(events.count("started") == 4, "\(events.all)")
        #expect(supervisor.instances[0].failure?.hasPrefix("start limit hit: 4 starts within 10 s") == true)
        #expect(supervisor.instances[0].lastCause == "exited with status 0")

        let json = try ProgramRunner.run(try modelessPath(), ["status", "svc", "--state-dir", state, "--json"])
        #expect(json.status == 0)
        #expect(json.output.contains(#""phase" : "failed""#) && json.output.contains("start limit hit"), "\(json.output)")
        let text = try ProgramRunner.run(try modelessPath(), ["status", "svc", "--state-dir", state])
        #expect(text.output.contains("svc-0 failed: start limit hit"), "\(text.output)")
        #expect(text.output.contains("containment: "), "\(text.output)")
    }

    /// Deaths soon after serving back off: the delays between starts grow.
    @Test func restartsBackOffWhenAnInstanceKeepsDyingAfterServing() {
        var policy = RestartPolicy(SupervisorConfiguration(service: "svc", command: ["x"], startLimitBurst: 0))
        var delays: [Double] = []
        var now: UInt64 = 1_000_000_000
        for _ in 0..<8 {
            policy.started(at: now)
            now += 50_000_000
            let delay = policy.ended(startedAt: now - 50_000_000, at: now, served: true)
            delays.append(delay)
            now += UInt64(delay * 1e9)
        }
        #expect(delays == [0, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5])
        #expect(policy.refusal(at: now) == nil, "startLimitBurst 0 turns the start limit off")
        // A run that lasted longer than the interval resets the back-off.
        policy.started(at: now)
        #expect(policy.ended(startedAt: now, at: now + 11_000_000_000, served: true) == 0)
    }

    /// An instance that never says it serves is stopped after startTimeoutSeconds and counted
    /// as a failed start; after startAttempts of them it is `failed`.
    @Test func anInstanceThatNeverServesHitsTheStartTimeout() throws {
        let supervisor = try Supervisor(shell("exec sleep 300") {
            $0.startTimeoutSeconds = 0.5
            $0.startAttempts = 2
        }, containers: containers)
        let began = monotonicNanoseconds()
        try supervisor.start()
        defer { supervisor.stop() }
        #expect(eventually(seconds: 10) { supervisor.instances[0].phase == .failed })
        let took = Double(monotonicNanoseconds() - began) / 1e9
        #expect(took >= 1 && took < 5, "two starts of 0.5 s each, then failed: \(took) s")
        #expect(supervisor.instances[0].lastCause == "did not report serving within 0.5 s (startTimeoutSeconds) (killed by SIGKILL)")
        #expect(supervisor.instances[0].failure == "2 failed starts in a row (startAttempts 2)")
        #expect(eventually(seconds: 5) { processesOfService(state).isEmpty })
    }

    /// Instances that print their `serving` line the moment they start are all seen serving:
    /// the line is read by the thread that started the instance, after it recorded the start.
    @Test func aServingLinePrintedAtOnceIsNeverMissed() throws {
        let supervisor = try Supervisor(shell("echo \"serving $2\"; exec sleep 300") { $0.instances = 8 }, containers: containers)
        try supervisor.start()
        defer { supervisor.stop() }
        #expect(supervisor.waitUntilServing(seconds: 20), "\(supervisor.instances.map { "\($0.name) \($0.phase)" })")
    }

    /// `stop()` called from an event callback, on the supervisor's own thread, does not wait
    /// for that thread: the thread stops everything when the callback returns.
    @Test func stopFromAnEventCallbackStopsEverything() throws {
        let supervisor = try Supervisor(shell("echo \"serving $2\"; exec sleep 300"), containers: containers)
        supervisor.onEvent = { [unowned supervisor] event in if event.message == "serving" { supervisor.stop() } }
        try supervisor.start()
        #expect(eventually(seconds: 10) { supervisor.instances[0].phase == .stopped && processesOfService(state).isEmpty },
                "\(supervisor.instances.map(\.phase)) \(processesOfService(state))")
        // The lock is released: another supervisor may run the service.
        #expect(eventually(seconds: 5) { (try? Supervisor(shell("exit 0"), containers: containers)) != nil })
        supervisor.stop()
    }

    /// A supervisor that is never started leaves no cgroup behind, and lets the next one run.
    @Test func aSupervisorNeverStartedLeavesNothing() throws {
        var supervisor: Supervisor? = try Supervisor(shell("exit 0"), containers: containers)
        let containment = try #require(supervisor?.containment)
        supervisor = nil
        if case .controlGroup(let parent) = containment { #expect(!FileAccess.exists(parent)) }
        #expect((try? Supervisor(shell("exit 0"), containers: containers)) != nil)
    }

    /// A configuration key the supervisor does not know is refused, naming it.
    @Test func anUnknownConfigurationKeyIsRefused() throws {
        let file = root + "/typo.json"
        try FileAccess.replaceFile(file, with: Array(#"{"service": "svc", "command": ["/bin/true"], "startLimitBurts": 3}"#.utf8))
        let result = try ProgramRunner.run(try modelessPath(), ["supervise", file])
        #expect(result.status == 64)
        #expect(result.output.contains("unknown key(s) startLimitBurts"), "\(result.output)")
    }

    /// A name already served by a process the supervisor did not start is not taken over:
    /// the supervisor refuses to start, and leaves the socket alone.
    @Test func aNameServedByAnotherProcessIsRefused() throws {
        let other = try ChildProcess(try modelessPath(), ["serve", "memory-disk", "--container", "svc-0"],
                                     environment: ["MODELESS_CONTAINER_DIR": containers.path])
        defer { other.signal(SIGKILL) }
        #expect(eventually(seconds: 20) { (try? UnixSocket.connect(to: containers.socketPath("svc-0")))?.close() != nil })
        let supervisor = try Supervisor(shell("echo \"serving $2\"; exec sleep 300"), containers: containers)
        #expect { try supervisor.start() } throws: { "\($0)".contains("served by a process this supervisor did not start") }
        #expect(processesOfService(state).isEmpty)
        #expect((try? UnixSocket.connect(to: containers.socketPath("svc-0")))?.close() != nil, "the other process still serves")
    }

    /// Starts `modeless supervise` on a two-instance service whose command is `script` run by
    /// `sh -c` (the modeless binary as `$0`, `--container NAME` as `$1 $2`), and waits until
    /// both instances serve. Returns the supervisor's process, its output so far, and the
    /// configuration.
    func supervise(_ script: String, useControlGroup: Bool = true) throws -> (ChildProcess, [String], SupervisorConfiguration) {
        let modeless = try modelessPath()
        let configuration = SupervisorConfiguration(service: "svc", instances: 2, command: ["/bin/sh", "-c", script, modeless],
                                                    stateDirectory: state, useControlGroup: useControlGroup)
        func quoted(_ text: String) -> String { "\"" + String(text.flatMap { $0 == "\\" || $0 == "\"" ? ["\\", $0] : [$0] }) + "\"" }
        let config = root + "/svc.json"
        try FileAccess.replaceFile(config, with: Array("""
            {"service": "svc", "instances": 2, "stateDirectory": \(quoted(state)), "cgroup": \(useControlGroup),
             "command": [\(configuration.command.map(quoted).joined(separator: ", "))]}
            """.utf8))
        let supervisor = try ChildProcess(modeless, ["supervise", config], environment: ["MODELESS_CONTAINER_DIR": containers.path])
        var serving = Set<String>()
        var output: [String] = []
        while serving.count < 2, let line = supervisor.readLine(timeout: 30) {
            output.append(line)
            // Each line carries its time (UTC, milliseconds) and level: `2026-11-30T11:42:29.123Z info [svc-0] serving`.
            if let match = line.wholeMatch(of: /\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info \[(svc-[01])\] serving/) {
                serving.insert(String(match.1))
            }
        }
        #expect(serving.count == 2, "\(output.joined(separator: "\n"))")
        return (supervisor, output, configuration)
    }

    /// The live children of process `parent` (its instances' guards, for a supervisor).
    func children(of parent: pid_t) -> [pid_t] {
        ProcessTable.processIDs().filter { pid in
            guard let bytes = try? FileAccess.readBytes("/proc/\(pid)/stat", limit: 4096),
                  let close = bytes.lastIndex(of: UInt8(ascii: ")")) else { return false }
            let fields = String(decoding: bytes[(close + 1)...], as: UTF8.self).split(separator: " ")
            return fields.count > 1 && fields[0] != "Z" && pid_t(fields[1]) == parent
        }
    }

    /// `modeless supervise` killed with SIGKILL while its instances have helpers running, one
    /// in the instance's process group (`sleep 300 &`) and one that left it (`setsid`), with
    /// and without cgroups: within 5 s no process of the service remains, neither instance
    /// nor helper nor guard.
    @Test(arguments: [true, false])
    func aKilledSupervisorTakesEveryProcessOfItsInstancesWithIt(useControlGroup: Bool) throws {
        let (supervisor, output, _) = try supervise("sleep 300 & setsid sleep 301 & exec \"$0\" serve memory-disk --device disk \"$@\"",
                                                    useControlGroup: useControlGroup)
        defer { killAll(processesOfService(state)) }
        let before = processesOfService(state)
        #expect(before.filter { $0.command == "modeless" }.count == 2, "\(before)")
        // An instance serves as soon as it starts; its wrapper's forked helpers may not have
        // run `sleep` yet on a loaded machine.
        #expect(eventually(seconds: 5) { processesOfService(state).filter { $0.command == "sleep" }.count == 4 },
                "\(processesOfService(state))")
        let guards = children(of: supervisor.processID)
        #expect(guards.count == 2, "one guard per instance: \(guards) \(output)")

        supervisor.signal(SIGKILL)
        _ = try supervisor.wait()
        #expect(eventually(seconds: 5) { processesOfService(state).isEmpty && guards.allSatisfy { kill($0, 0) != 0 } },
                "processes outlived their supervisor: \(processesOfService(state)), guards \(guards.filter { kill($0, 0) == 0 })")
        for name in ["svc-0", "svc-1"] {
            #expect((try? UnixSocket.connect(to: containers.socketPath(name))) == nil, "\(name) still answers")
        }
    }

    /// A guard killed together with its supervisor (the supervisor stopped first, so that it
    /// cannot act, then each instance's guard killed, then the supervisor): the instances die
    /// with their guards (their death signal), the helpers a wrapper script left outlive them
    /// until the next supervisor, which stops them before it starts its own instances, so no
    /// name is ever served twice.
    @Test func aKilledSupervisorAndGuardLeaveNoInstanceAndTheNextOneCleansUp() throws {
        let (first, output, configuration) = try supervise("sleep 300 & exec \"$0\" serve memory-disk --device disk \"$@\"")
        defer { killAll(processesOfService(state)) }
        #expect(output.contains { $0.wholeMatch(of: /\S+Z info supervising svc: 2 instance\(s\), .*/) != nil }, "\(output.joined(separator: "\n"))")
        let before = processesOfService(state)
        #expect(before.filter { $0.command == "modeless" }.count == 2, "\(before)")

        first.signal(SIGSTOP)
        let guards = children(of: first.processID)
        #expect(guards.count == 2, "\(guards)")
        for pid in guards { kill(pid, SIGKILL) }
        #expect(eventually(seconds: 5) { processesOfService(state).filter { $0.command == "modeless" }.isEmpty },
                "instances outlived their guards: \(processesOfService(state))")
        first.signal(SIGKILL)
        _ = try first.wait()
        for name in ["svc-0", "svc-1"] {
            #expect((try? UnixSocket.connect(to: containers.socketPath(name))) == nil, "\(name) still answers")
        }
        #expect(processesOfService(state).filter { $0.command == "sleep" }.count == 2, "the helpers outlived both: \(processesOfService(state))")

        let next = try Supervisor(configuration, containers: containers)
        let events = EventLog()
        next.onEvent = { events.add($0) }
        try next.start()
        #expect(next.waitUntilServing(seconds: 20), "\(events.all)")
        let oldPIDs = Set(before.map(\.pid))
        let now = processesOfService(state)
        #expect(Set(now.map(\.pid)).isDisjoint(with: oldPIDs), "the earlier run's processes remain: \(now)")
        for name in ["svc-0", "svc-1"] {
            #expect(now.filter { $0.instance == name && $0.command == "modeless" }.count == 1, "\(name) is served once: \(now)")
        }
        #expect(events.count("stopped 1 process(es) an earlier supervisor's run left") == 2, "\(events.all)")
        let took = try timedStop(next, limit: 10)
        #expect(took != nil)
        #expect(processesOfService(state).isEmpty, "\(processesOfService(state))")
    }
}
