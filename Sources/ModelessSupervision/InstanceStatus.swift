import ModelessSystem

/// One instance as the supervisor sees it.
public struct InstanceStatus: Sendable, Equatable {
    public enum Phase: String, Sendable {
        /// Started, not yet serving.
        case starting
        /// Serving its device.
        case serving
        /// Dead, to be started again.
        case restarting
        /// Died too often before serving: given up on.
        case failed
        /// Stopped by the supervisor.
        case stopped
    }

    public var name: String
    public var processID: Int32?
    public var phase: Phase
    /// How many times it was started again after dying.
    public var restarts: Int
    /// Why it last died ("killed by SIGKILL", "exited with status 1"), if it did.
    public var lastCause: String?

    /// One tab-separated line for the status file.
    var encoded: String {
        [name, processID.map(String.init) ?? "-", phase.rawValue, String(restarts), lastCause ?? "-"].joined(separator: "\t")
    }

    init(name: String, processID: Int32?, phase: Phase, restarts: Int, lastCause: String?) {
        self.name = name
        self.processID = processID
        self.phase = phase
        self.restarts = restarts
        self.lastCause = lastCause
    }

    init?(decoding line: Substring) {
        let fields = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
        guard fields.count == 5, let phase = Phase(rawValue: fields[2]), let restarts = Int(fields[3]) else { return nil }
        self.init(name: fields[0], processID: Int32(fields[1]), phase: phase, restarts: restarts,
                  lastCause: fields[4] == "-" ? nil : fields[4])
    }
}

/// The supervisor's status file, `supervisor.status` in the state directory: the service,
/// the supervisor's process, and a line per instance. Replaced atomically on every change.
public struct SupervisorStatus: Sendable, Equatable {
    public var service: String
    public var supervisorProcessID: Int32
    public var instances: [InstanceStatus]

    static let fileName = "supervisor.status"

    var encoded: String {
        (["service\t\(service)\t\(supervisorProcessID)"] + instances.map(\.encoded)).joined(separator: "\n") + "\n"
    }

    /// Reads the status file in `stateDirectory`.
    public static func read(stateDirectory: String) throws(SupervisionError) -> SupervisorStatus {
        let path = stateDirectory + "/" + fileName
        guard let text = FileAccess.readTextIfPresent(path) else {
            throw SupervisionError("no supervisor status at \(path): is `modeless supervise` running for this service (or give --state-dir)?")
        }
        let lines = text.split(separator: "\n")
        let head = lines.first?.split(separator: "\t") ?? []
        guard head.count == 3, head[0] == "service", let pid = Int32(head[2]) else {
            throw SupervisionError("\(path) is not a supervisor status file")
        }
        let instances = lines.dropFirst().compactMap(InstanceStatus.init(decoding:))
        guard instances.count == lines.count - 1 else { throw SupervisionError("\(path) has a malformed instance line") }
        return SupervisorStatus(service: String(head[1]), supervisorProcessID: pid, instances: instances)
    }
}
