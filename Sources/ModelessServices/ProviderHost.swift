import ModelessLogical
import ModelessSupervision

#if canImport(Glibc)
import Glibc
#endif

/// Hosts providers of logical devices: this process becomes a container (a user container, or
/// the kernel emulation's `kernel`) serving devices until SIGINT or SIGTERM. Started by
/// `modeless supervise`, the process is one instance of a service: its requests are recorded
/// in its state file's ledger, and one sent again after a failover is answered from a ledger if
/// it was executed.
package struct ProviderHost: HostedWork {
    /// Where and how the devices are served.
    package struct Configuration {
        /// The container (process namespace) served from; nil for the provider's own name.
        package var container: String?
        /// The device's name in the container; nil for the provider's default.
        package var device: String?
        /// Whether to serve from the kernel emulation's container, `kernel`.
        package var kernel = false
        /// How synchronous requests travel between processes.
        package var transport = RequestTransport.standard

        /// The provider's own container and device names, the standard transport.
        package init() {}
    }

    /// Where and how.
    package var configuration: Configuration
    /// Where the host reports.
    package var report: HostReport

    /// A host of `configuration`, reporting to `report`.
    package init(_ configuration: Configuration, report: HostReport) {
        self.configuration = configuration
        self.report = report
    }

    /// Starts the container, creates the device from `makeHandlers`, reports where it is, and
    /// serves until a termination signal.
    package func serve(defaultContainer: String, defaultDevice: String = "blk0", _ makeHandlers: (LogicalContainer) throws -> LogicalDeviceHandlers) throws {
        try serveDevices(defaultContainer: defaultContainer) { container in
            [(configuration.device ?? defaultDevice, try makeHandlers(container))]
        }
    }

    /// Like ``serve(defaultContainer:defaultDevice:_:)``, for a provider of several devices:
    /// `makeDevices` names each one (in the container) with its handlers.
    package func serveDevices(defaultContainer: String,
                              _ makeDevices: (LogicalContainer) throws -> [(name: String, handlers: LogicalDeviceHandlers)]) throws {
        TerminationSignals.block()
        let instance: SupervisedInstance?
        do { instance = try SupervisedInstance.fromEnvironment() } catch {
            printError("\(error)")
            throw HostExit(1)
        }
        if let instance {
            printLine("instance \(instance.name), start \(instance.start), state \(instance.state.path)")
            if !instance.interruptedRequests.isEmpty {
                printLine("the previous instance died with \(instance.interruptedRequests.count) request(s) in flight: "
                          + instance.interruptedRequests.map { String($0, radix: 16) }.joined(separator: " "))
            }
        }
        let logical: LogicalContainer
        do {
            // The server's log lines (MODELESS_LOG_LEVEL=debug shows every connection).
            let logger = try CommandLogging.logger("modeless.container")
            logical = configuration.kernel
                ? try LogicalContainer.kernelEmulation(transport: configuration.transport, logger: logger)
                : try LogicalContainer(name: configuration.container ?? defaultContainer, transport: configuration.transport, logger: logger)
        } catch let error as LoggingSetupError {
            printError("\(error)")
            throw HostExit(64)
        } catch let error as LogicalDeviceError {
            printError("\(error)")
            throw HostExit(error.kind == .invalidName ? 64 : 1)
        } catch {
            printError("\(error)")
            throw HostExit(1)
        }
        defer { logical.shutdown() }
        do {
            for (device, handlers) in try makeDevices(logical) {
                let name = try logical.createDevice(device, handlers: instance?.guarding(handlers) ?? handlers)
                printLine("serving \(name) (pid \(getpid()))")
            }
        } catch {
            printError("\(error)")
            throw HostExit(1)
        }
        TerminationSignals.wait()
    }
}
