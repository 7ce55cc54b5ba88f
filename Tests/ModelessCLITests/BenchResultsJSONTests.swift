import Foundation
import ModelessSystem
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `--json` on the benchmarks that run on models here (nvme and e1000 need a bound device:
/// the VM suites run them): standard output is one JSON object, the table goes to standard
/// error, and where the benchmark times operations one by one each measurement carries their
/// latency histogram.
@Suite("Command line: bench … --json", .serialized)
struct BenchResultsJSONTests {
    /// Runs `modeless ARGUMENTS` in a fresh directory (its containers there too) and returns the
    /// JSON on standard output and what went to standard error.
    func runJSON(_ arguments: [String], setUp: (String) throws -> Void = { _ in }) throws -> (root: [String: Any], errors: String) {
        var template = Array("/tmp/mlj-XXXXXX".utf8CString)
        let directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        defer { _ = try? ProgramRunner.run("/bin/rm", ["-rf", directory]) }
        try setUp(directory)
        let quoted = arguments.map { "'\($0.replacingOccurrences(of: "DIR", with: directory))'" }.joined(separator: " ")
        let result = try ProgramRunner.run("/bin/sh", ["-c", """
            MODELESS_CONTAINER_DIR="$1/containers" "$0" \(quoted) 2> "$1/err"
            """, try modelessPath(), directory])
        let errors = (try? String(contentsOfFile: directory + "/err", encoding: .utf8)) ?? ""
        #expect(result.status == 0, "\(result.output)\n\(errors)")
        let root = try #require(try JSONSerialization.jsonObject(with: Data(result.output.utf8)) as? [String: Any], "stdout: \(result.output)\nstderr: \(errors)")
        return (root, errors)
    }

    /// The measurements of `root`, checked for the fields every one has; a latency summary's
    /// count is `latencyCount` where given, and absent where nil.
    func measurements(_ root: [String: Any], benchmark: String, latencyCount: Int?) throws -> [[String: Any]] {
        #expect(root["benchmark"] as? String == benchmark)
        #expect(["debug", "release"].contains(root["build"] as? String))
        #expect(root["parameters"] is [String: String])
        let measurements = try #require(root["measurements"] as? [[String: Any]])
        #expect(!measurements.isEmpty)
        for measurement in measurements {
            #expect(measurement["name"] is String)
            let values = try #require(measurement["values"] as? [String: Double])
            #expect(!values.isEmpty && values.values.allSatisfy { $0.isFinite })
            if let latencyCount {
                let latency = try #require(measurement["latency"] as? [String: Any], "\(measurement)")
                #expect(latency["unit"] as? String == "ns" && latency["count"] as? Int == latencyCount, "\(latency)")
                let buckets = try #require(latency["buckets"] as? [[Int]])
                #expect(buckets.reduce(0) { $0 + $1[2] } == latencyCount)
                let percentiles = try #require(latency["percentiles"] as? [String: Int])
                let p50 = try #require(percentiles["p50"]), p99 = try #require(percentiles["p99"])
                let minimum = try #require(latency["min"] as? Int), maximum = try #require(latency["max"] as? Int)
                #expect(minimum <= p50 && p50 <= p99 && p99 <= maximum, "\(latency)")
            } else {
                #expect(measurement["latency"] == nil, "\(measurement)")
            }
        }
        return measurements
    }

    @Test func interruptPathTimesEachInterrupt() throws {
        let (root, errors) = try runJSON(["bench", "interrupt-path", "--interrupts", "200", "--json"])
        let measured = try measurements(root, benchmark: "interrupt-path", latencyCount: 200)
        #expect((measured[0]["values"] as? [String: Double])?["interrupts"] == 200)
        #expect(errors.contains("200 interrupts served one at a time"), "the text line goes to standard error: \(errors)")
    }

    @Test func interruptDatapathTimesEachFrameAndCountsReads() throws {
        let (frames, _) = try runJSON(["bench", "interrupt-datapath", "--path", "e1000-intx", "--count", "100", "--json"])
        _ = try measurements(frames, benchmark: "interrupt-datapath", latencyCount: 100)
        let (reads, _) = try runJSON(["bench", "interrupt-datapath", "--path", "nvme-msix", "--count", "100", "--depth", "4", "--json"])
        let measured = try measurements(reads, benchmark: "interrupt-datapath", latencyCount: nil)
        #expect((measured[0]["values"] as? [String: Double])?["reads"] == 100)
    }

    @Test func datapathReportsBothDevices() throws {
        let (root, errors) = try runJSON(["bench", "datapath", "--frames", "500", "--ios", "500", "--json"])
        let measured = try measurements(root, benchmark: "datapath", latencyCount: nil)
        #expect(measured.count == 2)
        #expect(errors.contains("e1000: 500 frames"), "\(errors)")
    }

    @Test func logicalReportsEveryMeasurementWithItsRatio() throws {
        let (root, _) = try runJSON(["bench", "logical", "--requests", "200", "--rounds", "1", "--json"])
        let measured = try measurements(root, benchmark: "logical", latencyCount: nil)
        #expect(measured.count == 7)
        #expect(measured.allSatisfy { ($0["values"] as? [String: Double])?["nanosecondsPerRequest"].map { $0 > 0 } == true })
    }

    @Test func failoverGivesTheHistogramOfItsRecoveries() throws {
        let kills = 3
        let (root, errors) = try runJSON(["bench", "failover", "--config", "DIR/service.json", "--device", "disk", "--destructive",
                                          "--kills", "\(kills)", "--blocks", "64", "--max-delay-ms", "20", "--json"]) { directory in
            let command = #"["modeless", "serve", "nvme", "--model", "\#(directory)/disk.img", "--model-blocks", "2048", "--irq", "poll", "--device", "disk"]"#
            try FileAccess.replaceFile(directory + "/service.json", with: Array("""
                {"service": "svc", "instances": 2, "stateDirectory": "\(directory)/state", "command": \(command)}
                """.utf8))
        }
        let measured = try measurements(root, benchmark: "failover", latencyCount: kills)
        #expect((measured[0]["values"] as? [String: Double])?["blocksMismatched"] == 0)
        #expect(errors.contains("ok: every write acknowledged once"), "\(errors)")
    }
}
