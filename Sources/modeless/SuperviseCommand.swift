import ArgumentParser
import FoundationEssentials
import Logging
import ModelessBus
import ModelessCommandLine
import ModelessServices
import ModelessSupervision
import ModelessSystem

struct Supervise: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a service's provider instances and restart them when they die, until SIGINT or SIGTERM.",
        discussion: """
            Each instance is a process and its own fault domain, container SERVICE-N. When one dies \
            the supervisor logs the cause, removes its socket and starts a replacement that resumes \
            from its state file; consumers fail over to a surviving or restarted instance. \
            `modeless status SERVICE` shows the instances. See docs/supervision.md.
            """)

    @Argument(help: "The configuration file (JSON).")
    var config: String

    func run() throws {
        let configuration: SupervisorConfiguration
        do { configuration = try SupervisorConfigurationFile.load(config) } catch let error as ConfigurationFileError { throw ValidationError(error.description) }
        let logger: Logger
        do { logger = try CommandLogging.logger("modeless.supervisor") } catch { throw ValidationError("\(error)") }
        let device: PCIAddress?
        do { device = try SupervisorConfigurationFile.device(in: config) } catch let error as ConfigurationFileError { throw ValidationError(error.description) }
        TerminationSignals.block()
        // A device re-plugged while the instance waits is bound again by its persistent override (docs/supervision.md).
        let presence = device.map {
            DevicePresence($0, rebinding: .init(report: { logger.notice("\($0)") }))
        }
        defer { presence?.stop() }
        let supervisor: Supervisor
        do {
            // Every line with its time and level (see LogLineHandler); an instance's own output at info.
            supervisor = try Supervisor(configuration, logger: logger)
            if let presence { supervisor.deviceAvailability = { presence.unavailability() } }
            supervisor.onOutput = { logger.info("\($1)", metadata: ["instance": "\($0)"]) }
            try supervisor.start()
        } catch {
            printError("\(error)")
            throw ExitCode(1)
        }
        logger.info("supervising \(configuration.service): \(configuration.instances) instance(s), state in \(configuration.stateDirectory), containment: \(supervisor.containment)")
        TerminationSignals.wait()
        logger.info("stopping \(configuration.service)")
        supervisor.stop()
    }
}
