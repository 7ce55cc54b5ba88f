import ModelessSystem
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `modeless bench …` runs `modeless-bench …`, the benchmarks' program installed beside it.
@Suite("Command line: bench forwards to modeless-bench")
struct BenchForwardingTests {
    @Test func benchHelpIsTheBenchmarkProgramsOwn() throws {
        let result = try modeless("bench", "--help")
        #expect(result.status == 0, "\(result.output)")
        for benchmark in ["interrupts", "nvme", "e1000", "logical", "failover"] {
            #expect(result.output.contains("  \(benchmark) "), "\(benchmark) missing from: \(result.output)")
        }
        #expect(!result.output.contains("WARNING"), "help measures nothing: no debug-build warning\n\(result.output)")
        #expect(result.output.contains("USAGE: modeless bench <subcommand>"), "\(result.output)")
    }

    @Test func aBadBenchmarkArgumentIsTheBenchmarkProgramsUsageError() throws {
        let result = try modeless("bench", "interrupts", "--samples", "0")
        #expect(result.status == 64, "\(result.output)")
        #expect(result.output.contains("--samples, --rounds and --seconds must be positive"), "\(result.output)")
    }

    @Test func withoutModelessBenchBesideItBenchSaysHowToGetIt() throws {
        var template = Array("/tmp/mlf-XXXXXX".utf8CString)
        let directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        defer { _ = try? ProgramRunner.run("/bin/rm", ["-rf", directory]) }
        let copy = directory + "/modeless"
        #expect(try ProgramRunner.run("/bin/cp", [try modelessPath(), copy]).status == 0)
        let result = try ProgramRunner.run(copy, ["bench", "interrupts", "--samples", "10"])
        #expect(result.status == 1, "\(result.output)")
        #expect(result.output.contains("\(directory)/modeless-bench is missing or not executable"), "\(result.output)")
        #expect(result.output.contains("swift build --product modeless-bench"), "\(result.output)")
    }
}
