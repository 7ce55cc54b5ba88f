import ModelessBus
import ModelessSystem
import Testing

extension VM {
    /// The sample drivers' match tables on the bench's devices: each driver offered another's
    /// device is refused at once, before the device is opened, and `modeless run ADDR` picks
    /// the driver whose table takes the device.
    @Suite("driver match tables on the bench")
    struct DriverMatchIntegrationTests {
        /// Each sample driver, the ids its table names in a refusal, and what its command needs.
        static let drivers: [(name: String, supported: String, arguments: [String])] = [
            ("edu", "1234:11e8", []),
            ("e1000", "8086:100e", ["--ip", "169.254.7.1"]),
            ("nvme", "class 010802 (NVM Express), 1b36:0010", []),
        ]

        static func samples() throws -> [(owner: String, address: PCIAddress, ids: String)] {
            [("edu", try TestBench.edu(), "1234:11e8"), ("e1000", try TestBench.e1000(0), "8086:100e"),
             ("nvme", try TestBench.nvme(), "1b36:0010")]
        }

        @Test func everyDriverRefusesEveryOtherSampleDevice() throws {
            let modeless = try ProgramRunner.builtProgram("modeless")
            let before = try TestBench.bindings()
            /// How long `arguments` take, in milliseconds.
            func timed(_ arguments: [String]) throws -> (ProgramResult, UInt64) {
                let started = monotonicNanoseconds()
                let result = try ProgramRunner.run(modeless, arguments)
                return (result, (monotonicNanoseconds() - started) / 1_000_000)
            }
            for driver in Self.drivers {
                for sample in try Self.samples() where sample.owner != driver.name {
                    // The emulated guest takes seconds, and varying ones, to start a debug build
                    // of the program and page in its argument parsing (over 9p): the faster of two
                    // refusals may take 2 s beyond the faster of two `run DRIVER --help`, which
                    // start and parse the same command and touch no device.
                    var start = UInt64.max, milliseconds = UInt64.max
                    var result = ProgramResult(status: -1, output: "")
                    for _ in 0..<2 {
                        start = min(start, try timed(["run", driver.name, "--help"]).1)
                        let attempt = try timed(["run", driver.name, sample.address.description] + driver.arguments)
                        result = attempt.0
                        milliseconds = min(milliseconds, attempt.1)
                    }
                    let what = "run \(driver.name) \(sample.address)"
                    // 68, not the 67 that opening an unbound device gives: refused before opening.
                    #expect(result.status == 68, "\(what): \(result.output)")
                    #expect(result.output.contains("the \(driver.name) driver does not support \(sample.address) \(sample.ids)"), "\(what): \(result.output)")
                    #expect(result.output.contains("it supports \(driver.supported)"), "\(what): \(result.output)")
                    #expect(result.output.contains("modeless run \(sample.owner) \(sample.address)"), "\(what) names the driver that takes it: \(result.output)")
                    #expect(milliseconds < start + 2000, "\(what) took \(milliseconds) ms, run \(driver.name) --help \(start) ms")
                    print("\(what): refused in \(milliseconds) ms (run \(driver.name) --help: \(start) ms)")
                }
            }
            #expect(try TestBench.bindings() == before, "a refusal changed a binding")
        }

        @Test func listShowsTheDriverEachDeviceWouldTake() throws {
            let listed = try TestBench.modeless("list")
            #expect(listed.status == 0)
            for sample in try Self.samples() {
                let line = listed.output.split(separator: "\n").first { $0.contains(sample.address.description) }
                #expect(line?.contains("match=\(sample.owner)") == true, "\(line ?? "no line for \(sample.address)")")
            }
        }

        /// `modeless run ADDR` names the driver it picked before that driver runs; edu runs its
        /// whole self-test, e1000 (on the 82540EM and on the 82574L) answers for a second, NVMe
        /// only identifies (no media write).
        @Test(arguments: [("edu", "1234:11e8", [String]()), ("e1000", "8086:100e", ["--ip", "169.254.7.1", "--seconds", "1"]),
                          ("e1000", "8086:10d3", ["--ip", "169.254.7.1", "--seconds", "1"]), ("nvme", "1b36:0010", ["--verify-mib", "0"])])
        func runWithoutADriverNamePicksIt(_ owner: String, _ ids: String, _ arguments: [String]) throws {
            let parts = ids.split(separator: ":").compactMap { UInt16($0, radix: 16) }
            let sample = (owner: owner, address: try TestBench.address(vendor: parts[0], device: parts[1]), ids: ids)
            let binder = PCIBinder()
            _ = try binder.bind(.address(sample.address), to: .vfioPCI, force: true)
            defer { _ = try? binder.unbind(.address(sample.address)) }
            let result = try ProgramRunner.run(try ProgramRunner.builtProgram("modeless"), ["run", sample.address.description] + arguments)
            let first = result.output.split(separator: "\n").first.map(String.init) ?? ""
            #expect(first.hasPrefix("driver: \(owner) for \(sample.address) [\(sample.ids)]"), "\(result.output)")
            #expect(result.status == 0, "\(result.output)")
            let ranLine = "\(owner) on vfio \(sample.address)"
            #expect(result.output.contains(ranLine), "\(result.output)")
            if owner == "edu" { #expect(result.output.contains("identical"), "\(result.output)") }
        }
    }
}
