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
    /// `run nvme --destructive` write/read/verify, at a random time from the process's start
    /// (so some kills land during the controller's start). Each kill is followed by a full
    /// `run nvme --destructive` that must verify its data, alternating modes, MSI-X and INTx,
    /// and the two namespaces.
    @Suite("NVMe driver killed and run again")
    struct NVMeKillTests {
        static var kills: Int {
            getenv("MODELESS_NVME_KILLS").flatMap { Int(String(cString: $0)) } ?? 10
        }

        @Test func theNextRunPassesAfterEveryKill() throws {
            let nvme = try TestBench.nvme()
            let binder = PCIBinder()
            _ = try binder.bind(.address(nvme), to: .vfioPCI, force: true)
            defer { _ = try? binder.unbind(.address(nvme)) }
            let modeless = try ProgramRunner.builtProgram("modeless")
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
            /// Runs to the end; returns how long it took from its start, in nanoseconds.
            func fullRun(_ round: Int, after what: String) throws -> UInt64 {
                let started = monotonicNanoseconds()
                let child = try ChildProcess(modeless, fullRunArguments(round))
                var lines: [String] = []
                while let line = child.readLine(timeout: 120) { lines.append(line) }
                let status = try child.wait()
                let output = lines.joined(separator: "\n")
                let passed = status == 0 && output.contains("identical")
                if !passed { failedRuns += 1 }
                #expect(passed, "run \(fullRunArguments(round).joined(separator: " ")) after \(what): exit \(status)\n\(output)")
                return monotonicNanoseconds() - started
            }
            var runTime = try fullRun(0, after: "nothing")
            var generator = SystemRandomNumberGenerator()
            var killedMidIO = 0
            for round in 1...Self.kills {
                let arguments = killedRunArguments(round)
                let child = try ChildProcess(modeless, arguments)
                // Up to the length of a full run (start, then I/O), or into the bench's 2 s of reads.
                let span = Double(runTime) + (round % 2 == 0 ? 2e9 : 0)
                let delay = UInt64(span * Double.random(in: 0.2...1, using: &generator))
                usleep(UInt32(delay / 1000))
                let started = child.readLine(timeout: 0.02) != nil  // The first line comes once the controller is up.
                let endedFirst = child.exitStatusIfEnded() != nil
                child.signal(SIGKILL)
                let status = try child.wait()
                if started && !endedFirst && status == 128 + SIGKILL { killedMidIO += 1 }
                while child.readLine(timeout: 1) != nil {}
                let what = "a kill \(delay / 1_000_000) ms into `\(arguments.prefix(2).joined(separator: " "))` (\(started ? "mid-I/O" : "during start"))"
                runTime = min(runTime, try fullRun(round, after: what))
            }
            print("NVMe kill test: \(Self.kills) kills (\(killedMidIO) mid-I/O), \(Self.kills + 1 - failedRuns) of \(Self.kills + 1) full runs passed; the shortest full run took \(runTime / 1_000_000) ms")
            #expect(killedMidIO >= Self.kills / 3, "enough kills landed while I/O was in flight")
        }
    }
}
