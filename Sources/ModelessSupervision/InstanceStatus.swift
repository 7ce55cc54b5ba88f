import ModelessSystem

/// One instance as the supervisor sees it.
public struct InstanceStatus: Sendable, Equatable {
    /// Where an instance is in its life, as the status file and `modeless status` show it; the raw
    /// value is the word written there.
    public enum Phase: String, Sendable {
        /// Started, not yet serving.
        case starting
        /// Serving its device.
        case serving
        /// Dead, to be started again.
        case restarting
        /// Given up on: it failed to start `startAttempts` times in a row, or hit the start
        /// limit (`startLimitBurst` starts within `startLimitIntervalSeconds`). Not restarted
        /// until the supervisor is.
        case failed
        /// Stopped by the supervisor.
        case stopped
        /// Ended with its device gone (unplugged, unbound); started again once the device is
        /// back (``Supervisor/deviceAvailability``).
        case waitingForDevice = "waiting-for-device"
    }

    /// The instance's name from the service configuration (`storage-0`), which is also its
    /// container's name.
    public var name: String
    /// The process the instance runs as, or nil while none does (failed, stopped, waiting for its
    /// device).
    public var processID: Int32?
    /// Where the instance is in its life.
    public var phase: Phase
    /// How many times it was started again after dying.
    public var restarts: Int
    /// Why it last died ("killed by SIGKILL", "exited with status 1"), if it did.
    public var lastCause: String?
    /// Why it was given up on, when its phase is `failed`.
    public var failure: String?

    /// One tab-separated line for the status file.
    var encoded: String {
        [name, processID.map(String.init) ?? "-", phase.rawValue, String(restarts), lastCause ?? "-", failure ?? "-"]
            .map { $0.replacingTabs }.joined(separator: "\t")
    }

    init(name: String, processID: Int32?, phase: Phase, restarts: Int, lastCause: String?, failure: String? = nil) {
        self.name = name
        self.processID = processID
        self.phase = phase
        self.restarts = restarts
        self.lastCause = lastCause
        self.failure = failure
    }

    init?(decoding line: Substring) {
        let fields = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
        guard fields.count == 5 || fields.count == 6, let phase = Phase(rawValue: fields[2]), let restarts = Int(fields[3]) else { return nil }
        self.init(name: fields[0], processID: Int32(fields[1]), phase: phase, restarts: restarts,
                  lastCause: fields[4] == "-" ? nil : fields[4], failure: fields.count < 6 || fields[5] == "-" ? nil : fields[5])
    }
}

/// The supervisor's status file, `supervisor.status` in the state directory: the service,
/// the supervisor's process, and a line per instance. Replaced atomically on every change.
public struct SupervisorStatus: Sendable, Equatable {
    /// The service's name: the configuration file's name without `.json`.
    public var service: String
    /// The process of `modeless supervise` that wrote the file; `modeless status` checks that it
    /// still runs before trusting the lines.
    public var supervisorProcessID: Int32
    /// Every instance of the service, in the configuration's order.
    public var instances: [InstanceStatus]
    /// How the instances are contained: "cgroup" or "process-group" (see ``InstanceContainment``).
    public var containment: String
    /// The containment in words: the cgroup's path, or why there is none.
    public var containmentDetail: String

    /// A status as the supervisor writes it; `containment` and `containmentDetail` are `-` when
    /// unknown (a status file from a supervisor that did not record them).
    public init(service: String, supervisorProcessID: Int32, instances: [InstanceStatus], containment: String = "-",
                containmentDetail: String = "-") {
        self.service = service
        self.supervisorProcessID = supervisorProcessID
        self.instances = instances
        self.containment = containment
        self.containmentDetail = containmentDetail
    }

    static let fileName = "supervisor.status"

    var encoded: String {
        let head = ["service", service, String(supervisorProcessID), containment, containmentDetail].map { $0.replacingTabs }
        return ([head.joined(separator: "\t")] + instances.map(\.encoded)).joined(separator: "\n") + "\n"
    }

    /// Reads the status file in `stateDirectory`.
    public static func read(stateDirectory: String) throws(SupervisionError) -> SupervisorStatus {
        let path = stateDirectory + "/" + fileName
        guard let text = FileAccess.readTextIfPresent(path) else {
            throw SupervisionError("no supervisor status at \(path): is `modeless supervise` running for this service (or give --state-dir)?")
        }
        let lines = text.split(separator: "\n")
        let head = lines.first?.split(separator: "\t", omittingEmptySubsequences: false) ?? []
        guard head.count == 3 || head.count == 5, head[0] == "service", let pid = Int32(head[2]) else {
            throw SupervisionError("\(path) is not a supervisor status file")
        }
        let instances = lines.dropFirst().compactMap(InstanceStatus.init(decoding:))
        guard instances.count == lines.count - 1 else { throw SupervisionError("\(path) has a malformed instance line") }
        return SupervisorStatus(service: String(head[1]), supervisorProcessID: pid, instances: instances,
                                containment: head.count == 5 ? String(head[3]) : "-", containmentDetail: head.count == 5 ? String(head[4]) : "-")
    }
}

extension String {
    /// The text with tabs and newlines made spaces, for one field of a tab-separated line.
    fileprivate var replacingTabs: String {
        String(map { $0 == "\t" || $0 == "\n" ? " " : $0 })
    }
}
