import ModelessBus
import ModelessDevice
import ModelessDrivers
import ModelessSystem
import Testing

#if canImport(Glibc)
import Glibc
#endif

extension VM {
    /// An e1000 driver killed at any point leaves the NIC for the next run, which must pass
    /// all the same. Each round SIGKILLs one driver process at a random moment: every odd round
    /// `modeless run e1000` while the kernel floods it with pings (mid-receive, an interrupt
    /// pending or being handled, echo replies going out), every even round `modeless bench
    /// e1000` sending as fast as the ring takes frames (mid-transmit). After each kill a full
    /// `modeless run e1000 --peer` must get all three of its echo requests answered by the
    /// kernel. Modes alternate between user and kernel emulation. `MODELESS_E1000_KILLS`
    /// kills per NIC (default 10: about 8 minutes for both NICs in a loaded emulated guest).
    @Suite("e1000 driver killed and run again")
    struct E1000KillTests {
        static var kills: Int {
            getenv("MODELESS_E1000_KILLS").flatMap { Int(String(cString: $0)) } ?? 10
        }

        /// The 82540EM by INTx and, where the bench has one, the 82574L by MSI-X (a vector per
        /// cause); `MODELESS_E1000_KILL_NICS` (e.g. `82540EM`) keeps only the NICs it names.
        static let nics: [(name: String, irq: String)] = {
            let all = [("82540EM", "intx")] + (E1000DriverIntegrationTests.e1000e != nil ? [("82574L", "msix")] : [])
            guard let chosen = getenv("MODELESS_E1000_KILL_NICS").map({ String(cString: $0) }) else { return all }
            return all.filter { chosen.split(separator: ",").contains(Substring($0.0)) }
        }()

        @Test(arguments: nics.map(\.name))
        func theNextRunPingsAfterEveryKill(_ nic: String) throws {
            let irq = Self.nics.first { $0.name == nic }!.irq
            let bench = E1000DriverIntegrationTests()
            try bench.withBench(nic == "82574L" ? E1000DriverIntegrationTests.e1000e : nil) { address in
                let modeless = try ProgramRunner.builtProgram("modeless")
                let kernelMAC = try TestBench.shell("cat /sys/bus/pci/devices/\(try TestBench.e1000(1))/net/*/address")
                    .output.split(whereSeparator: \.isWhitespace).first.map(String.init) ?? ""
                func mode(_ round: Int) -> String { round % 2 == 0 ? "user" : "kernel-emulation" }
                func answering(_ round: Int, peer: Bool) -> [String] {
                    ["run", "e1000", address.description, "--ip", "169.254.79.2", "--irq", irq, "--mode", mode(round), "--seconds", "2"]
                        + (peer ? ["--peer", "169.254.79.1", "--count", "3"] : [])
                }
                var failedRuns = 0
                /// A full run that pings the kernel; returns how long it took, in nanoseconds.
                func fullRun(_ round: Int, after what: String) throws -> UInt64 {
                    let started = monotonicNanoseconds()
                    let child = try ChildProcess(modeless, answering(round, peer: true))
                    var lines: [String] = []
                    while let line = child.readLine(timeout: 300) { lines.append(line) }
                    let status = try child.wait()
                    let output = lines.joined(separator: "\n")
                    // `run e1000 --peer` exits 1 unless every echo request was answered.
                    let passed = status == 0
                    if !passed { failedRuns += 1 }
                    #expect(passed, "\(nic) run (\(mode(round))) after \(what): exit \(status)\n\(output)")
                    return monotonicNanoseconds() - started
                }
                var runTime = try fullRun(0, after: "nothing")
                var generator = SystemRandomNumberGenerator()
                // A kill drawn after the run had already ended kills nothing: another is drawn,
                // up to twice the count in all.
                var killedMidRun = 0, round = 0
                while killedMidRun < Self.kills && round < 2 * Self.kills {
                    round += 1
                    let receiving = round % 2 == 1
                    let arguments = receiving
                        ? answering(round, peer: false)
                        : ["bench", "e1000", address.description, "--to", kernelMAC, "--mode", mode(round), "--seconds", "3"]
                    // The kernel floods our address with pings while an answering driver runs.
                    let flood = receiving
                        ? try ChildProcess("/bin/sh", ["-c", "ip neigh flush all; exec busybox ping -q -i 0.02 -s 400 -w 30 169.254.79.2"])
                        : nil
                    let started = monotonicNanoseconds()
                    let child = try ChildProcess(modeless, arguments)
                    let delay = UInt64(Double(runTime) * Double.random(in: 0.1...1, using: &generator))
                    usleep(UInt32(delay / 1000))
                    let endedFirst = child.exitStatusIfEnded() != nil
                    child.signal(SIGKILL)
                    let status = try child.wait()
                    if !endedFirst && status == 128 + SIGKILL { killedMidRun += 1 }
                    while child.readLine(timeout: 1) != nil {}
                    if let flood {
                        flood.signal(SIGKILL)
                        _ = try flood.wait()
                    }
                    let what = "a kill \((monotonicNanoseconds() - started) / 1_000_000) ms into "
                        + (receiving ? "an answering run under a ping flood" : "a transmit flood") + " (round \(round))"
                    runTime = min(runTime, try fullRun(round + 1, after: what))
                }
                print("e1000 kill test, \(nic) \(irq): \(killedMidRun) kills mid-run in \(round) tries, \(round + 1 - failedRuns) of \(round + 1) full runs passed; the shortest full run took \(runTime / 1_000_000) ms")
                #expect(failedRuns == 0)
                #expect(killedMidRun >= Self.kills / 2, "most kills landed while the driver ran")
            }
        }
    }
}
