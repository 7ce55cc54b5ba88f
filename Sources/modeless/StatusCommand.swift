import ArgumentParser
import ModelessCommandLine
import ModelessSupervision

#if canImport(Glibc)
import Glibc
#endif

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show a supervised service's instances: process, phase, restarts, requests in flight, last cause of death.",
        discussion: "Reads the supervisor's status file and each instance's state file; see docs/supervision.md.")

    @Argument(help: "The service (the configuration's \"service\").")
    var service: String

    @Option(name: .customLong("state-dir"), help: "The service's state directory, if the configuration set one.")
    var stateDirectory: String?

    @Flag(help: "Print JSON.")
    var json = false

    struct Row: Encodable {
        var instance: String
        var pid: Int32?
        var phase: String
        var restarts: Int
        var starts: UInt64
        var inFlight: Int
        var executed: UInt64
        var replayed: UInt64
        var lastCause: String?
        /// Why the instance was given up on (phase "failed").
        var failure: String?
    }

    struct Report: Encodable {
        var service: String
        var supervisorPid: Int32
        var supervisorRunning: Bool
        /// "cgroup" or "process-group".
        var containment: String
        /// The services' cgroup, or why none is used.
        var containmentDetail: String
        var instances: [Row]
    }

    func run() throws {
        let directory = stateDirectory ?? SupervisorConfiguration.defaultStateDirectory(for: service)
        let status: SupervisorStatus
        do { status = try SupervisorStatus.read(stateDirectory: directory) } catch {
            printError("\(error)")
            throw ExitCode(1)
        }
        let rows = status.instances.map { instance -> Row in
            var row = Row(instance: instance.name, pid: instance.processID, phase: instance.phase.rawValue, restarts: instance.restarts,
                          starts: 0, inFlight: 0, executed: 0, replayed: 0, lastCause: instance.lastCause, failure: instance.failure)
            if let state = try? InstanceStateFile(path: directory + "/" + instance.name + ".state", readOnly: true) {
                defer { state.close() }
                row.starts = state.starts
                row.inFlight = instance.processID == nil ? 0 : state.ledger.inFlight().count
                let counters = state.record.load().flatMap(SupervisedInstance.decode) ?? .init()
                row.executed = counters.executed
                row.replayed = counters.replayed
            }
            return row
        }
        let report = Report(service: status.service, supervisorPid: status.supervisorProcessID,
                            supervisorRunning: supervisorRuns(directory), containment: status.containment,
                            containmentDetail: status.containmentDetail, instances: rows)
        if json {
            try printJSON(report)
            return
        }
        printLine("service \(report.service): supervisor pid \(report.supervisorPid)\(report.supervisorRunning ? "" : " (not running)")")
        switch report.containment {
        case "cgroup": printLine("containment: a cgroup v2 group and a process group per instance, in \(report.containmentDetail)")
        case "process-group": printLine("containment: a process group per instance (no cgroup: \(report.containmentDetail))")
        default: break
        }
        let header = ["instance", "pid", "phase", "restarts", "starts", "in flight", "executed", "replayed", "last cause"]
        let table = rows.map { row in
            [row.instance, row.pid.map(String.init) ?? "-", row.phase, String(row.restarts), String(row.starts),
             String(row.inFlight), String(row.executed), String(row.replayed), row.lastCause ?? "-"]
        }
        let widths = header.indices.map { column in ([header] + table).map { $0[column].count }.max()! }
        for line in [header] + table {
            printLine(line.indices.map { $0 == line.count - 1 ? line[$0] : line[$0].padded(widths[$0]) }.joined(separator: "  "))
        }
        for row in rows where row.phase == "failed" {
            printLine("\(row.instance) failed: \(row.failure ?? "given up on"); it is not restarted until the supervisor is (fix the cause first; see `supervisor.log` in \(directory))")
        }
    }

    /// Whether the service's supervisor runs: it holds `supervisor.lock` while it does.
    private func supervisorRuns(_ directory: String) -> Bool {
        let fd = open(directory + "/supervisor.lock", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return flock(fd, LOCK_SH | LOCK_NB) != 0
    }
}

extension String {
    fileprivate func padded(_ width: Int) -> String { self + String(repeating: " ", count: max(0, width - count)) }
}
