import ModelessBus
import ModelessRuntime
import ModelessSystem
import Testing

#if canImport(Glibc)
import Glibc
#endif

extension VM {
    /// The TAP driver as a supervised service: `modeless supervise` runs
    /// `run e1000 ADDR --tap NAME`; a TCP stream from the kernel's stack through the TAP to the
    /// kernel's e1000 in its own namespace runs while the driver is SIGKILLed
    /// `MODELESS_TAP_KILLS` times (3 by default); the supervisor restarts it each time, the
    /// TAP survives every kill (the instance makes it persistent), the stream completes with
    /// the right SHA-256, and stopping the supervisor removes the interface.
    ///
    /// Per kill it prints the stall (SIGKILL to data arriving at the receiver again) and its
    /// parts: the replacement's process start (SIGKILL to entering its command, which includes
    /// the supervisor noticing the death), its start up to serving (TAP, device open, driver
    /// start, from its ready line), and the rest, TCP's retransmission timer.
    @Suite("e1000 driver serving the kernel through a TAP under modeless supervise")
    struct TapSupervisionTests {
        typealias Bench = TapIntegrationTests

        /// Reads the supervisor's output until its instance reports serving the TAP; returns the line.
        static func nextServing(_ supervisor: ChildProcess, _ log: inout [String]) -> String? {
            while let line = supervisor.readLine(timeout: 180) {
                log.append(line)
                if line.contains("] serving TAP ") { return line }
            }
            return nil
        }

        /// The number after `word` in `line` (`pid 123;` gives 123).
        static func number(after word: String, in line: String) -> Double? {
            let words = line.split(separator: " ")
            guard let at = words.firstIndex(where: { $0 == word }), at + 1 < words.count else { return nil }
            return Double(words[at + 1].filter { $0.isNumber || $0 == "." })
        }

        /// The startup steps of a ready line: `up in X ms: TAP A ms, device open B ms, ...`.
        static func startup(in line: String) -> String {
            guard let part = line.split(separator: ";").map({ $0.trimmingPrefix(" ") }).first(where: { $0.hasPrefix("up in ") }) else { return "?" }
            return String(part.prefix { $0 != "(" }).trimmingBlanks()
        }

        /// Seconds since midnight (UTC) now, and of a log line's leading time
        /// (`2026-11-30T15:21:19.270Z ...`), to time the supervisor's steps from the kill.
        static func secondsOfDayNow() -> Double {
            var now = timespec()
            clock_gettime(CLOCK_REALTIME, &now)
            return Double(now.tv_sec % 86_400) + Double(now.tv_nsec) / 1e9
        }

        static func secondsOfDay(inLogLine line: String) -> Double? {
            guard let time = line.split(separator: " ").first?.split(separator: "T").last?.dropLast() else { return nil }
            let parts = time.split(separator: ":").compactMap { Double($0) }
            guard parts.count == 3 else { return nil }
            return parts[0] * 3600 + parts[1] * 60 + parts[2]
        }

        static func tunFlags(_ name: String) -> Int? {
            FileAccess.readTextIfPresent("/sys/class/net/\(name)/tun_flags").flatMap { Int($0.trimmingBlanks().dropFirst(2), radix: 16) }
        }

        /// `IFF_PERSIST` in `tun_flags`.
        static let persistFlag = 0x0800

        @Test func aSupervisedTapCarriesAStreamAcrossKillsAndGoesWithTheService() throws {
            try Bench().withBench { address, peer in
                defer { _ = try? TestBench.shell("ip link del \(Bench.tapName) 2>/dev/null") }
                let environment = UblkExportTests.containerEnvironment()
                var template = Array("/tmp/mts-XXXXXX".utf8CString)
                let root = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
                let config = root + "/tap.json"
                // The kills are deliberate: a start-limit window of 1 s keeps the supervisor's back-off
                // for instances that die soon after starting out of the stall.
                try FileAccess.replaceFile(config, with: Array("""
                    {"service": "mtap", "instances": 1, "stateDirectory": "\(root)/state", "startLimitBurst": 1000, "startLimitIntervalSeconds": 1,
                     "command": ["modeless", "run", "e1000", "\(address)", "--tap", "\(Bench.tapName)", "--tap-address", "\(Bench.tapAddress)"]}
                    """.utf8))
                let supervisor = try ChildProcess(try ProgramRunner.builtProgram("modeless"), ["supervise", config], environment: environment)
                var log: [String] = []
                var stopped = false
                defer {
                    if !stopped {
                        supervisor.signal(SIGTERM)
                        _ = UblkExportTests.exitStatus(supervisor, within: 120)
                    }
                }
                guard let first = Self.nextServing(supervisor, &log), var pid = Self.number(after: "pid", in: first).map({ pid_t($0) }) else {
                    Issue.record("the service did not start: \(log.joined(separator: "\n"))")
                    return
                }
                print("TAP supervised: \(first)")
                #expect(first.contains("persistent"), "a supervised instance makes its TAP persistent: \(first)")
                #expect(Self.tunFlags(Bench.tapName).map { $0 & Self.persistFlag != 0 } == true, "IFF_PERSIST is set")
                let ping = try TestBench.shell("busybox ping -c 2 -W 5 \(Bench.peerAddress)")
                #expect(ping.status == 0, "ping through the supervised TAP: \(ping.output)")

                let sent = try Bench.randomFile("/tmp/tap-sent", mebibytes: Bench.mebibytes)
                defer { _ = try? TestBench.shell("rm -f /tmp/tap-sent /tmp/tap-received") }
                let receiver = try Bench.startReceiver(peer, port: 5003, into: "/tmp/tap-received")
                let sender = try TestBench.shell("nc -N \(Bench.peerAddress) 5003 < /tmp/tap-sent >/dev/null 2>&1 & echo $!").output.trimmingBlanks()
                var killed = 0
                var progress = 0
                var stalls: [Double] = []
                for _ in 0..<Bench.kills {
                    // Kill only once the stream has moved on since the last restart.
                    let deadline = monotonicNanoseconds() + 180_000_000_000
                    while Bench.fileSize("/tmp/tap-received") < progress + (1 << 20) && monotonicNanoseconds() < deadline { usleep(100_000) }
                    let size = Bench.fileSize("/tmp/tap-received")
                    guard size >= progress + (1 << 20), size < Bench.mebibytes << 20 else { break }
                    let killedAt = monotonicNanoseconds(), killedAtTimeOfDay = Self.secondsOfDayNow()
                    let logBefore = log.count
                    kill(pid, SIGKILL)
                    killed += 1
                    progress = Bench.fileSize("/tmp/tap-received")
                    guard let serving = Self.nextServing(supervisor, &log), let next = Self.number(after: "pid", in: serving).map({ pid_t($0) }),
                          next != pid else {
                        Issue.record("kill \(killed): no replacement reported serving: \(log.suffix(20).joined(separator: "\n"))")
                        break
                    }
                    let servingAt = monotonicNanoseconds()
                    pid = next
                    #expect(serving.contains("(attached)"), "kill \(killed): the replacement attached to the TAP the killed one left: \(serving)")
                    #expect(Bench.exists(Bench.tapName))
                    while Bench.fileSize("/tmp/tap-received") <= progress && monotonicNanoseconds() < servingAt + 120_000_000_000 { usleep(20_000) }
                    let resumed = monotonicNanoseconds()
                    stalls.append(Double(resumed - killedAt) / 1e9)
                    let entered = Self.number(after: "monotonic", in: serving).map { ($0 - Double(killedAt) / 1e6) / 1000 }
                    // The supervisor's "started (pid N)": from the kill to there, it noticed the
                    // death and waited for the killed process to be gone (its device released);
                    // from there to entering, the new process was executed and loaded.
                    let started = log[logBefore...].first { $0.contains("] started (pid") }.flatMap(Self.secondsOfDay(inLogLine:))
                        .map { $0 - killedAtTimeOfDay }
                    print("TAP supervised kill \(killed): stall \(Bench.tenths(stalls.last!)) s; replacement started by the supervisor "
                          + "\(started.map(Bench.tenths) ?? "?") s and entered \(entered.map(Bench.tenths) ?? "?") s after the kill, "
                          + "\(Self.startup(in: serving)), serving seen \(Bench.tenths(Double(servingAt - killedAt) / 1e9)) s after the kill, "
                          + "data again \(Bench.tenths(Double(resumed - servingAt) / 1e9)) s after that")
                }
                let sorted = stalls.sorted()
                if !sorted.isEmpty {
                    print("TAP supervised kills: \(killed), stall p50 \(Bench.tenths(sorted[sorted.count / 2])) s, max \(Bench.tenths(sorted.last!)) s")
                }
                #expect(killed == Bench.kills, "killed \(killed) of \(Bench.kills) times before the stream ended (\(progress) bytes)")
                #expect(try Bench.waitForExit(sender, seconds: 900), "the sender finished")
                #expect(try Bench.waitForExit(receiver, seconds: 60), "the receiver saw the end of the stream")
                let received = try TestBench.shell("sha256sum < /tmp/tap-received").output.prefix(64)
                #expect(String(received) == sent, "\(Bench.fileSize("/tmp/tap-received")) of \(Bench.mebibytes << 20) bytes arrived")

                // Stopping the service removes the interface.
                supervisor.signal(SIGTERM)
                stopped = true
                #expect(UblkExportTests.exitStatus(supervisor, within: 120) == 0, "\(log.suffix(20).joined(separator: "\n"))")
                #expect(!Bench.exists(Bench.tapName), "stopping the supervisor removed \(Bench.tapName)")
                if let out = getenv("MODELESS_VM_OUT").map({ String(cString: $0) }) {
                    try? FileAccess.replaceFile(out + "/tap-supervised.txt", with: Array(log.joined(separator: "\n").utf8))
                }
            }
        }
    }
}
