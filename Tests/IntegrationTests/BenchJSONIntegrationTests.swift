import Foundation
import ModelessBus
import ModelessSystem
import Testing

extension VM {
    /// `modeless bench nvme` and `bench e1000` with `--json` on the bench's devices: `modeless`
    /// runs `modeless-bench` beside it in the guest, standard output is the JSON alone, and each
    /// NVMe queue depth carries the latency histogram of its reads, which `--histogram-svg` draws.
    @Suite("bench --json on the bench's devices")
    struct BenchJSONIntegrationTests {
        /// Runs `modeless ARGUMENTS` with standard error apart; returns the parsed standard output.
        func json(_ arguments: [String]) throws -> [String: Any] {
            let quoted = arguments.map { "'\($0)'" }.joined(separator: " ")
            let result = try ProgramRunner.run("/bin/sh", ["-c", "\"$0\" \(quoted) 2>/tmp/bench-json.err", try ProgramRunner.builtProgram("modeless")])
            let errors = (try? String(contentsOfFile: "/tmp/bench-json.err", encoding: .utf8)) ?? ""
            #expect(result.status == 0, "\(result.output)\n\(errors)")
            return try #require(try JSONSerialization.jsonObject(with: Data(result.output.utf8)) as? [String: Any], "\(result.output)\n\(errors)")
        }

        @Test func nvmeGivesEachDepthsReadsPerSecondAndLatencyHistogram() throws {
            let nvme = try TestBench.nvme()
            let binder = PCIBinder()
            _ = try binder.bind(.address(nvme), to: .vfioPCI, force: true)
            defer { _ = try? binder.unbind(.address(nvme)) }
            let picture = "/tmp/bench-nvme-latency.svg"
            unlink(picture)
            let root = try json(["bench", "nvme", nvme.description, "--depths", "1", "4", "--seconds", "1", "--json", "--histogram-svg", picture])
            #expect(root["benchmark"] as? String == "nvme")
            let measurements = try #require(root["measurements"] as? [[String: Any]])
            #expect(measurements.count == 2)
            for (measurement, depth) in zip(measurements, [1.0, 4.0]) {
                let values = try #require(measurement["values"] as? [String: Double])
                #expect(values["queueDepth"] == depth)
                let rate = try #require(values["readsPerSecond"])
                let latency = try #require(measurement["latency"] as? [String: Any])
                let count = try #require(latency["count"] as? Int)
                // Every read of the second counted; the rate is over a little more than a second.
                #expect(count > 0 && Double(count) >= rate * 0.5, "\(count) reads timed at \(rate) reads/s")
                let buckets = try #require(latency["buckets"] as? [[Int]])
                #expect(buckets.reduce(0) { $0 + $1[2] } == count)
                // --histogram-svg drew the same reads: a curve per depth, its legend with their count.
                let svg = try String(contentsOfFile: picture, encoding: .utf8)
                #expect(svg.hasPrefix("<svg ") && svg.hasSuffix("</svg>\n") && svg.ranges(of: "<polyline").count == 2)
                #expect(svg.contains("depth \(Int(depth)): p50 ") && svg.contains(", n \(count)</text>"), "depth \(depth), \(count) reads")
            }
        }

        @Test func e1000GivesItsFrameRate() throws {
            try E1000DriverIntegrationTests().withBench { address in
                let kernelMAC = try TestBench.shell("cat /sys/bus/pci/devices/\(try TestBench.e1000(1))/net/*/address")
                    .output.split(whereSeparator: \.isWhitespace).first.map(String.init) ?? ""
                let root = try json(["bench", "e1000", address.description, "--to", kernelMAC, "--seconds", "1", "--json"])
                let measurements = try #require(root["measurements"] as? [[String: Any]])
                let values = try #require(measurements.first?["values"] as? [String: Double])
                #expect((values["framesSent"] ?? 0) > 0 && (values["framesPerSecond"] ?? 0) > 0, "\(values)")
            }
        }
    }
}
