import ModelessBus
import ModelessSystem
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension VM {
    /// A driver killed at any point leaves the controller for the next run, which must pass all
    /// the same: the NVMe driver is killed with SIGKILL `MODELESS_NVME_KILLS` times (default
    /// 10; docs/drivers.md records a 100-kill run), alternately during `bench nvme` (32 reads
    /// in flight, completions and interrupts pending at every instant) and during a
    /// `run nvme --destructive` write/read/verify (16 MiB), at a random time once the controller
    /// is up, or (a third of them) at a random time during its start. Each kill is followed by a full
    /// `run nvme --destructive` that must verify its data, alternating modes, MSI-X and INTx,
    /// and the two namespaces.
    @Suite("NVMe driver killed and run again")
    struct NVMeKillTests {
        static var kills: Int {
            getenv("MODELESS_NVME_KILLS").flatMap { Int(String(cString: $0)) } ?? 10
        }

        /// The `modeless` binary to run: `MODELESS_NVME_KILL_PROGRAM` (e.g. the release
        /// build's, quicker to start in the emulated guest), or the one next to this test bundle.
        static func program() throws -> String {
            if let path = getenv("MODELESS_NVME_KILL_PROGRAM").map({ String(cString: $0) }), !path.isEmpty { return path }
            return try ProgramRunner.builtProgram("modeless")
        }

        @Test func theNextRunPassesAfterEveryKill() throws {
            let nvme = try TestBench.nvme()
            let binder = PCIBinder()
            _ = try binder.bind(.address(nvme), to: .vfioPCI, force: true)
            defer { _ = try? binder.unbind(.address(nvme)) }
            let modeless = try Self.program()
            let modes = ["user", "kernel-emulation"]
            func fullRunArguments(_ round: Int) -> [String] {
                ["run", "nvme", nvme.description, "--destructive", "--verify-mib", "2", "--read-mib", "1",
                 "--mode", modes[round % 2], "--irq", (round / 2) % 2 == 0 ? "msix" : "intx",
                 "--namespace", (round / 4) % 2 == 0 ? "1" : "2"]
            }
            func killedRunArguments(_ round: Int) -> [String] {
                round % 2 == 0
                    ? ["bench", "nvme", nvme.description, "--depths", "32", "--seconds", "2", "--mode", modes[(round / 2) % 2]]
                    : ["run", "nvme", nvme.description, "--destructive", "--verify-mib", "16", "--mode", modes[(round / 2) % 2]]
            }
            var failedRuns = 0
            /// Runs to the end; returns how long it took to start the controller (to its first
            /// line) and then to do its I/O, in nanoseconds.
            func fullRun(_ round: Int, after what: String) throws -> (start: UInt64, io: UInt64) {
                let spawned = monotonicNanoseconds()
                let child = try ChildProcess(modeless, fullRunArguments(round))
                var lines: [String] = []
                let first = child.readLine(timeout: 120)
                let started = monotonicNanoseconds()
                lines += first.map { [$0] } ?? []
                while let line = child.readLine(timeout: 120) { lines.append(line) }
                let status = try child.wait()
                let output = lines.joined(separator: "\n")
                let passed = status == 0 && output.contains("identical")
                if !passed { failedRuns += 1 }
                #expect(passed, "run \(fullRunArguments(round).joined(separator: " ")) after \(what): exit \(status)\n\(output)")
                return (started - spawned, monotonicNanoseconds() - started)
            }
            var times = try fullRun(0, after: "nothing")
            var generator = SystemRandomNumberGenerator()
            // A kill drawn after the run had already ended kills nothing: another is drawn, up to
            // twice the count in all.
            var killedMidIO = 0, killedDuringStart = 0, round = 0
            while killedMidIO + killedDuringStart < Self.kills && round < 2 * Self.kills {
                round += 1
                let arguments = killedRunArguments(round)
                let child = try ChildProcess(modeless, arguments)
                // A third of the kills anywhere in the controller's start; the others once it
                // is up (its first line), within its I/O: the bench's 2 s of reads at depth 32,
                // or a 16 MiB write/read/verify.
                let duringStart = round % 3 == 0
                let delay: UInt64
                if duringStart {
                    delay = UInt64(Double(times.start) * Double.random(in: 0...1, using: &generator))
                } else {
                    _ = child.readLine(timeout: 120)
                    let span = round % 2 == 0 ? 2e9 : Double(times.io) * 4
                    delay = UInt64(span * Double.random(in: 0...1, using: &generator))
                }
                usleep(UInt32(delay / 1000))
                let endedFirst = child.exitStatusIfEnded() != nil
                child.signal(SIGKILL)
                let status = try child.wait()
                if !endedFirst && status == 128 + SIGKILL {
                    if duringStart { killedDuringStart += 1 } else { killedMidIO += 1 }
                }
                while child.readLine(timeout: 1) != nil {}
                let what = "a kill \(delay / 1_000_000) ms into `\(arguments.prefix(2).joined(separator: " "))` (\(duringStart ? "from its start" : "after its controller started"))"
                let next = try fullRun(round, after: what)
                times = (min(times.start, next.start), min(times.io, next.io))
                print("NVMe kill try \(round), \(killedMidIO + killedDuringStart) of \(Self.kills) kills landed: \(what); \(round + 1 - failedRuns) of \(round + 1) full runs passed so far")
            }
            print("NVMe kill test: \(killedMidIO + killedDuringStart) kills (\(killedMidIO) mid-I/O, \(killedDuringStart) during start) in \(round) tries, \(round + 1 - failedRuns) of \(round + 1) full runs passed; the quickest full run started in \(times.start / 1_000_000) ms and did its I/O in \(times.io / 1_000_000) ms")
            #expect(killedMidIO >= Self.kills / 2, "most kills landed while I/O was in flight")
        }
    }
}
