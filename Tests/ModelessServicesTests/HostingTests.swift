import ModelessRuntime
import ModelessServices
import Synchronization
import Testing

/// What a host reported, kept for the test to read.
final class CollectedReport: Sendable {
    private let kept = Mutex<(lines: [String], errors: [String])>(([], []))

    /// The lines reported, in order.
    var lines: [String] { kept.withLock { $0.lines } }
    /// The failures reported, in order.
    var errors: [String] { kept.withLock { $0.errors } }

    /// A report that keeps every line and failure here.
    var report: HostReport {
        HostReport(line: { line in self.kept.withLock { $0.lines.append(line) } },
                   error: { error in self.kept.withLock { $0.errors.append(error) } })
    }
}

/// The hosts of ModelessServices used as a library, without the command line: a configuration
/// in, the lines and failures through a report, and a failure's exit status as ``HostExit``.
@Suite("Hosting without the command line")
struct HostingTests {
    @Test(arguments: [ExecutionMode.user, .kernelEmulation])
    func theEduSelfTestOnItsModelReportsEachStep(_ mode: ExecutionMode) throws {
        var configuration = EduRun.Configuration(device: nil)
        configuration.mode = mode
        configuration.realtime = false
        configuration.verify = true
        let collected = CollectedReport()
        try EduRun(configuration, report: collected.report).run()
        // The self-test's report is one entry of several lines.
        let lines = collected.lines.flatMap { $0.split(separator: "\n").map(String.init) }
        #expect(lines.first == "edu on model 0000:00:03.0, \(mode) mode, msi interrupts", "\(lines)")
        #expect(lines.contains("identification: 0x010000ed (alive)"), "\(lines)")
        #expect(lines.contains { $0.hasPrefix("DMA:") && $0.hasSuffix("identical") }, "\(lines)")
        #expect(lines.last == "verifier: no reports", "\(lines)")
        #expect(collected.errors.isEmpty, "\(collected.errors)")
    }

    @Test func aTraceFileThatCannotBeWrittenEndsWithStatus1() throws {
        var configuration = EduRun.Configuration(device: nil)
        configuration.realtime = false
        configuration.traceJSON = "/nonexistent/dir/trace.json"
        let collected = CollectedReport()
        #expect(throws: HostExit(1)) { try EduRun(configuration, report: collected.report).run() }
        #expect(collected.errors.count == 1 && collected.errors[0].hasPrefix("cannot write the trace to /nonexistent/dir/trace.json"), "\(collected.errors)")
    }

    @Test func aDeviceThatIsNotThereEndsWithItsDocumentedStatus() throws {
        let collected = CollectedReport()
        #expect(throws: HostExit(66)) { try NVMeRun(.init(device: "0000:7f:1f.7"), report: collected.report).run() }
        #expect(collected.errors.count == 1 && collected.errors[0].hasPrefix("no PCI device at 0000:7f:1f.7"), "\(collected.errors)")
        #expect(collected.lines.isEmpty, "nothing ran: \(collected.lines)")
        let malformed = CollectedReport()
        #expect(throws: HostExit(64)) { try E1000Run(.init(device: "not an address!", addressText: "10.0.0.2", address: [10, 0, 0, 2]), report: malformed.report).run() }
        #expect(malformed.errors.count == 1, "\(malformed.errors)")
    }

    @Test func theExitStatusTableCoversTheBusRefusals() {
        #expect(ExitStatus.code(for: .noSuchDevice) == 66)
        #expect(ExitStatus.code(for: .malformedAddress) == 64)
        #expect(ExitStatus.unsupportedDevice == 68)
    }

    @Test func progressLinesGoToTheirReport() {
        let collected = CollectedReport()
        let progress = ProgressLine("verify:", total: 8, unit: "MiB written", interval: 0, report: collected.report.line)
        progress.update(4)
        #expect(collected.lines == ["verify: 4 of 8 MiB written (50 %), 0 s"], "\(collected.lines)")
    }
}
