import ModelessLogical

/// What a ``Supervisor`` runs: `instances` copies of one provider command, named
/// `SERVICE-0`, `SERVICE-1`, ... Each is started as `command --container NAME` with the
/// supervision environment (see ``SupervisedInstance``).
public struct SupervisorConfiguration: Sendable, Equatable {
    /// The service's name: the prefix of its instances' container names.
    public var service: String
    /// How many instances run at once (at least 1).
    public var instances: Int
    /// The provider program and its arguments, without `--container`.
    public var command: [String]
    /// Where the instances' state files, the status file and the log live.
    public var stateDirectory: String
    /// Seconds to wait before restarting an instance that died, unless it keeps dying quickly
    /// (then the delay backs off up to ``restartMaxDelaySeconds``; see docs/supervision.md).
    public var restartDelaySeconds: Double
    /// The longest back-off delay before restarting an instance that keeps dying quickly.
    public var restartMaxDelaySeconds: Double
    /// An instance that fails to start (dies, or does not serve within
    /// ``startTimeoutSeconds``) this many times in a row is given up on (phase `failed`).
    public var startAttempts: Int
    /// At most this many starts of an instance within ``startLimitIntervalSeconds``; one more
    /// and the instance is given up on (systemd's `StartLimitBurst`). 0 turns the limit off.
    public var startLimitBurst: Int
    /// The window of ``startLimitBurst`` (systemd's `StartLimitIntervalSec`), which is also
    /// how long a run must last for its death not to count as quick. 0 turns the limit off.
    public var startLimitIntervalSeconds: Double
    /// An instance that has not printed its `serving` line this long after it started is
    /// stopped and counted as a failed start.
    public var startTimeoutSeconds: Double
    /// How long a stopped instance gets after SIGTERM before its processes get SIGKILL.
    public var stopTimeoutSeconds: Double
    /// Whether to put each instance in its own cgroup v2 group where the machine has a
    /// writable cgroup v2 hierarchy (each instance always leads its own process group).
    public var useControlGroup: Bool
    /// Extra environment for the instances.
    public var environment: [String: String]
    /// Whether each instance keeps a warm standby: once the instance serves, a second process
    /// of the command is started with `MODELESS_STANDBY=1` in its environment, in its own
    /// process group; it must wait by itself until the serving process is gone (the NVMe ublk
    /// server waits on its claim). When the serving process dies, the standby becomes the
    /// instance at once, without the restart delay, and a new standby is started once it serves.
    public var standby: Bool

    /// Systemd's defaults for the start limit (5 starts within 10 s); a device driver's start
    /// (controller reset, queue set-up, in a slow guest) within 60 s; 5 s to stop.
    public init(
        service: String, instances: Int = 1, command: [String], stateDirectory: String? = nil,
        restartDelaySeconds: Double = 0, restartMaxDelaySeconds: Double = 5, startAttempts: Int = 5,
        startLimitBurst: Int = 5, startLimitIntervalSeconds: Double = 10, startTimeoutSeconds: Double = 60,
        stopTimeoutSeconds: Double = 5, useControlGroup: Bool = true, environment: [String: String] = [:],
        standby: Bool = false
    ) {
        self.standby = standby
        self.service = service
        self.instances = instances
        self.command = command
        self.stateDirectory = stateDirectory ?? Self.defaultStateDirectory(for: service)
        self.restartDelaySeconds = restartDelaySeconds
        self.restartMaxDelaySeconds = restartMaxDelaySeconds
        self.startAttempts = startAttempts
        self.startLimitBurst = startLimitBurst
        self.startLimitIntervalSeconds = startLimitIntervalSeconds
        self.startTimeoutSeconds = startTimeoutSeconds
        self.stopTimeoutSeconds = stopTimeoutSeconds
        self.useControlGroup = useControlGroup
        self.environment = environment
    }

    /// `services/SERVICE` beside the container directory (for root,
    /// `/run/modeless/services/SERVICE`).
    public static func defaultStateDirectory(for service: String, containers: ContainerDirectory = .standard) -> String {
        var parent = containers.path
        if let slash = parent.lastIndex(of: "/") { parent = String(parent[..<slash]) }
        return parent + "/services/" + service
    }

    /// The container name of instance `index`.
    public func instanceName(_ index: Int) -> String { "\(service)-\(index)" }

    /// Every instance's container name.
    public var instanceNames: [String] { (0..<instances).map(instanceName) }

    /// Checks the configuration, naming what is wrong.
    public func validate() throws(SupervisionError) {
        guard instances >= 1, instances <= 64 else {
            throw SupervisionError("a service runs 1 to 64 instances, not \(instances)")
        }
        do {
            try LogicalDeviceName.validate(instanceName(instances - 1), what: "instance container")
        } catch {
            throw SupervisionError("the service name '\(service)' does not make valid container names: \(error)")
        }
        guard !command.isEmpty else { throw SupervisionError("the configuration names no command to run") }
        guard !command.contains("--container") else {
            throw SupervisionError("leave --container out of the command: the supervisor names each instance's container")
        }
        guard restartDelaySeconds >= 0, restartDelaySeconds <= 3600, restartMaxDelaySeconds >= 0, restartMaxDelaySeconds <= 3600 else {
            throw SupervisionError("restartDelaySeconds and restartMaxDelaySeconds must be 0 to 3600 s")
        }
        guard startAttempts >= 1 else { throw SupervisionError("startAttempts must be at least 1, not \(startAttempts)") }
        guard startLimitBurst >= 0, startLimitIntervalSeconds >= 0, startLimitIntervalSeconds <= 86_400 else {
            throw SupervisionError("startLimitBurst must be at least 0 and startLimitIntervalSeconds 0 to 86400 s (0 turns the start limit off)")
        }
        guard startTimeoutSeconds > 0, startTimeoutSeconds <= 86_400, stopTimeoutSeconds > 0, stopTimeoutSeconds <= 3600 else {
            throw SupervisionError("startTimeoutSeconds must be above 0 and at most 86400 s, stopTimeoutSeconds above 0 and at most 3600 s")
        }
    }
}
