import Foundation
import ModelessSystem
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `modeless run edu --trace-json FILE`: the interrupt trace as Chrome trace-event JSON, checked
/// as a viewer reads it.
@Suite("Command line: --trace-json")
struct TraceJSONTests {
    @Test(arguments: ["user", "kernel-emulation"])
    func theEduDriversTraceIsValidTraceEventJSON(_ mode: String) throws {
        var template = Array("/tmp/mlt-XXXXXX".utf8CString)
        let directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        defer { _ = try? ProgramRunner.run("/bin/rm", ["-rf", directory]) }
        let file = directory + "/edu.json"
        let result = try modeless("run", "edu", "--model", "--mode", mode, "--no-realtime", "--trace-json", file)
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains("written to \(file)"), "\(result.output)")

        let data = try #require(FileManager.default.contents(atPath: file))
        let root = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let events = try #require(root["traceEvents"] as? [[String: Any]])
        #expect(root["displayTimeUnit"] as? String == "ns")

        var lastTime: [Int: Double] = [:]
        var spans: [(name: String, thread: Int, start: Double, end: Double)] = []
        for event in events {
            let phase = try #require(event["ph"] as? String, "\(event)")
            #expect(["X", "i", "M"].contains(phase), "\(event)")
            #expect(event["name"] is String && event["pid"] is Int, "\(event)")
            let thread = try #require(event["tid"] as? Int, "\(event)")
            guard phase != "M" else { continue }
            let time = try #require((event["ts"] as? NSNumber)?.doubleValue, "\(event)")
            #expect(time >= 0)
            #expect(time >= lastTime[thread, default: 0], "timestamps go back on thread \(thread): \(event)")
            lastTime[thread] = time
            let args = try #require(event["args"] as? [String: Any], "\(event)")
            #expect(args["cpu"] is Int && args["subject"] is Int && args["sequence"] is Int, "\(event)")
            #expect(args["unpaired"] == nil, "the run ended with every span closed: \(event)")
            if phase == "X" {
                let duration = try #require((event["dur"] as? NSNumber)?.doubleValue, "\(event)")
                #expect(duration >= 0)
                spans.append((event["name"] as! String, thread, time, time + duration))
            } else {
                #expect(event["s"] as? String == "t", "\(event)")
            }
        }

        // One "real ISR" span per ISR call the driver counted, each inside the interrupt lock
        // (or interrupt level) on its thread.
        let calls = try #require(result.output.firstMatch(of: /ISR: +(\d+) calls/).map { Int($0.1)! }, "\(result.output)")
        let isrSpans = spans.filter { $0.name == "real ISR" }
        #expect(calls > 0 && isrSpans.count == calls, "\(isrSpans.count) real ISR spans for \(calls) calls")
        for isr in isrSpans {
            #expect(spans.contains { $0.name == "interrupt lock held" && $0.thread == isr.thread && $0.start <= isr.start && isr.end <= $0.end },
                    "real ISR at \(isr.start) µs is not inside the interrupt lock")
        }
        // Only what ran: user mode's fused stage is one event, and no event stands for DPC A or
        // the wait thread's wake-up.
        let names = Set(events.compactMap { $0["name"] as? String })
        #expect(!names.contains("DPC A") && !names.contains("wait thread woken"))
        let fused = "generic ISR + DPC A + wait thread woken (one thread)"
        if mode == "user" {
            #expect(names.contains(fused) && !names.contains("generic ISR"), "\(names)")
        } else {
            #expect(names.contains("generic ISR") && !names.contains(fused), "\(names)")
        }
    }

    @Test func aTraceFileThatCannotBeWrittenIsRefusedBeforeTheRun() throws {
        let result = try modeless("run", "edu", "--model", "--no-realtime", "--trace-json", "/nonexistent/dir/edu.json")
        #expect(result.status == 64, "\(result.output)")
        #expect(result.output.contains("cannot write in /nonexistent/dir"), "\(result.output)")
        #expect(!result.output.contains("edu on"), "the driver did not run: \(result.output)")
    }
}
