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
    /// Seconds to wait before restarting an instance that died after it had started serving.
    public var restartDelaySeconds: Double
    /// An instance that dies this many times in a row before it serves is given up on.
    public var startAttempts: Int
    /// Extra environment for the instances.
    public var environment: [String: String]

    public init(
        service: String, instances: Int = 1, command: [String], stateDirectory: String? = nil,
        restartDelaySeconds: Double = 0, startAttempts: Int = 5, environment: [String: String] = [:]
    ) {
        self.service = service
        self.instances = instances
        self.command = command
        self.stateDirectory = stateDirectory ?? Self.defaultStateDirectory(for: service)
        self.restartDelaySeconds = restartDelaySeconds
        self.startAttempts = startAttempts
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
        guard restartDelaySeconds >= 0, startAttempts >= 1 else {
            throw SupervisionError("restart delay must be at least 0 s and start attempts at least 1")
        }
    }
}
