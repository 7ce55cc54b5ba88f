import Foundation
import ModelessSystem
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `modeless bench interrupts --json --histogram-svg FILE`, and the warning a debug build gives.
@Suite("Command line: bench --json")
struct BenchJSONTests {
    @Test func theInterruptBenchPrintsItsHistogramsAsJSONAndDrawsThem() throws {
        var template = Array("/tmp/mlb-XXXXXX".utf8CString)
        let directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        defer { _ = try? ProgramRunner.run("/bin/rm", ["-rf", directory]) }
        let samples = 50
        // Standard output alone is the JSON; standard error (progress, the warning) goes to a file.
        let result = try ProgramRunner.run("/bin/sh", ["-c", """
            "$0" bench interrupts --samples \(samples) --seconds 0.05 --rounds 1 --json --histogram-svg "$1/h.svg" 2> "$1/err"
            """, try modelessPath(), directory])
        let errors = try String(contentsOfFile: directory + "/err", encoding: .utf8)
        #expect(result.status == 0, "\(result.output)\n\(errors)")

        let root = try #require(try JSONSerialization.jsonObject(with: Data(result.output.utf8)) as? [String: Any], "\(result.output)")
        #expect(root["benchmark"] as? String == "interrupts")
        let build = try #require(root["build"] as? String)
        // The tests run the binary they were built with: a debug build says so, loudly.
        #expect(errors.contains("WARNING: this modeless is a DEBUG build") == (build == "debug"), "\(errors)")
        let paths = try #require(root["paths"] as? [[String: Any]])
        #expect(paths.map { $0["name"] as? String } == ["eventfd wake-up (baseline)", "user pipeline", "kernel-emulation pipeline"])
        for path in paths {
            let latency = try #require(path["latency"] as? [String: Any])
            #expect(latency["unit"] as? String == "ns" && latency["count"] as? Int == samples, "\(latency)")
            let buckets = try #require(latency["buckets"] as? [[Int]])
            #expect(buckets.reduce(0) { $0 + $1[2] } == samples)
            #expect(buckets.allSatisfy { $0[0] < $0[1] } && zip(buckets, buckets.dropFirst()).allSatisfy { $0[1] <= $1[0] })
            let percentiles = try #require(latency["percentiles"] as? [String: Int])
            let p50 = try #require(percentiles["p50"]), p99 = try #require(percentiles["p99"])
            let minimum = try #require(latency["min"] as? Int), maximum = try #require(latency["max"] as? Int)
            #expect(minimum <= p50 && p50 <= p99 && p99 <= maximum, "\(latency)")
        }

        let svg = try String(contentsOfFile: directory + "/h.svg", encoding: .utf8)
        #expect(svg.hasPrefix("<svg ") && svg.hasSuffix("</svg>\n"))
        #expect(svg.ranges(of: "<polyline").count == 3)
        #expect(svg.contains("user pipeline: p50 "))
    }

    @Test func aHistogramFileThatCannotBeWrittenIsRefusedBeforeMeasuring() throws {
        let result = try modeless("bench", "interrupts", "--samples", "10", "--histogram-svg", "/nonexistent/dir/h.svg")
        #expect(result.status == 64, "\(result.output)")
        #expect(result.output.contains("--histogram-svg /nonexistent/dir/h.svg: cannot write in /nonexistent/dir"), "\(result.output)")
        #expect(!result.output.contains("round 1"), "nothing was measured: \(result.output)")
    }
}
