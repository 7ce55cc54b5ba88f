import ModelessLogical
import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// Runs a service's instances, each a provider process and its own fault domain, and keeps
/// them running: it watches every instance through a pidfd; when one dies it logs the cause,
/// cleans up what the instance left (its socket; the kernel has already released its VFIO
/// device, IOMMU mappings and eventfds with its file descriptors), and starts a replacement
/// under the same name, which resumes from the dead instance's state file. Consumers notice
/// the death through their connections and fail over (``ServiceClient``).
///
/// Usable as a library, or through `modeless supervise CONFIG`.
public final class Supervisor: @unchecked Sendable {
    /// Something that happened to an instance, for logging.
    public struct Event: Sendable {
        public var instance: String
        public var message: String
    }

    public let configuration: SupervisorConfiguration
    /// Called for every event (start, serving, death with its cause, restart), on the
    /// supervisor's threads. The events also go to `supervisor.log` in the state directory.
    public var onEvent: (@Sendable (Event) -> Void)?
    /// Called with every line an instance prints.
    public var onOutput: (@Sendable (String, String) -> Void)?

    private let lock = ConditionLock()
    private var slots: [Slot]
    private let watcher: ProcessExitWatcher
    private var watchThread: SystemThread?
    private var stopping = false
    private let containers: ContainerDirectory

    private struct Slot {
        var status: InstanceStatus
        var process: ChildProcess?
        var reader: SystemThread?
        var failedStarts = 0
        var restartAt: UInt64?
    }

    /// Checks the configuration and prepares the state directory (mode 0700).
    public init(_ configuration: SupervisorConfiguration, containers: ContainerDirectory = .standard) throws(SupervisionError) {
        try configuration.validate()
        self.configuration = configuration
        self.containers = containers
        do { watcher = try ProcessExitWatcher() } catch { throw SupervisionError("cannot watch processes: \(error)") }
        slots = configuration.instanceNames.map {
            Slot(status: InstanceStatus(name: $0, processID: nil, phase: .stopped, restarts: 0, lastCause: nil))
        }
        do { try FileAccess.createDirectories(configuration.stateDirectory, mode: 0o700) } catch {
            throw SupervisionError("cannot create the state directory: \(error)")
        }
        if let status = try? SupervisorStatus.read(stateDirectory: configuration.stateDirectory),
           status.supervisorProcessID != getpid(), kill(status.supervisorProcessID, 0) == 0 {
            throw SupervisionError("a supervisor (pid \(status.supervisorProcessID)) already runs \(configuration.service) in \(configuration.stateDirectory): stop it first")
        }
    }

    deinit { stop() }

    /// The path of instance `name`'s state file.
    public func statePath(of name: String) -> String { configuration.stateDirectory + "/" + name + ".state" }

    /// Starts every instance and the watch thread.
    public func start() throws(SupervisionError) {
        for index in slots.indices { try launch(index) }
        do {
            watchThread = try SystemThread(name: "supervisor") { [unowned self] in self.watch() }
        } catch { throw SupervisionError("cannot start the watch thread: \(error)") }
    }

    /// The instances now.
    public var instances: [InstanceStatus] { lock.withLock { slots.map(\.status) } }

    /// Waits until every instance serves; false after `seconds`.
    public func waitUntilServing(seconds: Double) -> Bool {
        let deadline = monotonicNanoseconds() + UInt64(seconds * 1e9)
        return lock.withLock {
            while !slots.allSatisfy({ $0.status.phase == .serving }) {
                let now = monotonicNanoseconds()
                guard now < deadline else { return false }
                _ = lock.wait(nanoseconds: deadline - now)
            }
            return true
        }
    }

    /// Stops every instance (SIGTERM, then SIGKILL after 5 s) and the watch thread. Idempotent.
    public func stop() {
        let alreadyStopping = lock.withLock { () -> Bool in
            defer { stopping = true }
            return stopping
        }
        guard !alreadyStopping else { return }
        // The watch thread may be starting a replacement: let it finish first, so that every
        // process it started is in the slots when they are stopped.
        watcher.wake()
        watchThread?.join()
        watchThread = nil
        let processes = lock.withLock { slots.compactMap(\.process) }
        for process in processes where process.exitStatusIfEnded() == nil { process.signal(SIGTERM) }
        let deadline = monotonicNanoseconds() + 5_000_000_000
        for process in processes {
            while process.exitStatusIfEnded() == nil && monotonicNanoseconds() < deadline { usleep(10_000) }
            if process.exitStatusIfEnded() == nil {
                process.signal(SIGKILL)
                _ = try? process.wait()
            }
        }
        let readers: [SystemThread] = lock.withLock {
            defer {
                for index in slots.indices {
                    slots[index].status.phase = .stopped
                    slots[index].status.processID = nil
                    slots[index].process = nil
                    slots[index].reader = nil
                }
            }
            return slots.compactMap(\.reader)
        }
        for reader in readers { reader.join() }
        writeStatus()
    }

    // MARK: Running instances

    private func launch(_ index: Int) throws(SupervisionError) {
        let name = configuration.instanceName(index)
        var environment = configuration.environment
        environment["MODELESS_INSTANCE"] = name
        environment["MODELESS_INSTANCE_STATE"] = statePath(of: name)
        environment["MODELESS_SERVICE_STATE_DIR"] = configuration.stateDirectory
        environment["MODELESS_CONTAINER_DIR"] = containers.path
        let process: ChildProcess
        do {
            process = try ChildProcess(configuration.command[0], Array(configuration.command.dropFirst()) + ["--container", name],
                                       environment: environment)
            try watcher.watch(process.processID)
        } catch {
            throw SupervisionError("cannot start \(name) (\(configuration.command.joined(separator: " "))): \(error)")
        }
        let reader = try? SystemThread(name: "out \(name)") { [unowned self] in self.forwardOutput(of: process, index: index) }
        lock.withLock {
            slots[index].process = process
            slots[index].reader = reader
            slots[index].restartAt = nil
            slots[index].status.processID = process.processID
            slots[index].status.phase = .starting
        }
        report(name, "started (pid \(process.processID))")
        writeStatus()
    }

    /// Forwards an instance's output, noticing the line that says it serves.
    private func forwardOutput(of process: ChildProcess, index: Int) {
        let name = configuration.instanceName(index)
        while true {
            guard let line = process.readLine(timeout: 1) else {
                if process.outputEnded { return }
                continue
            }
            onOutput?(name, line)
            if line.hasPrefix("serving ") {
                let changed = lock.withLock { () -> Bool in
                    guard slots[index].process === process, slots[index].status.phase == .starting else { return false }
                    slots[index].status.phase = .serving
                    slots[index].failedStarts = 0
                    lock.broadcast()
                    return true
                }
                if changed {
                    report(name, "serving")
                    writeStatus()
                }
            }
        }
    }

    private func watch() {
        while !lock.withLock({ stopping }) {
            let ended = watcher.waitForExits(timeoutMilliseconds: 100)
            for pid in ended { handleExit(of: pid) }
            restartDue()
        }
    }

    private func handleExit(of pid: pid_t) {
        guard let index = lock.withLock({ slots.firstIndex { $0.process?.processID == pid } }) else { return }
        let name = configuration.instanceName(index)
        let process = lock.withLock { slots[index].process! }
        let cause = Self.describe(exitStatus: (try? process.wait()) ?? -1)
        // The dead instance's socket would make consumers' opens fail with "connection
        // refused" until the replacement replaces it; remove it now.
        unlink(containers.socketPath(name))
        let (phase, delay): (InstanceStatus.Phase, Double) = lock.withLock {
            let diedBeforeServing = slots[index].status.phase == .starting
            slots[index].failedStarts = diedBeforeServing ? slots[index].failedStarts + 1 : 0
            slots[index].status.lastCause = cause
            slots[index].status.processID = nil
            let failedStarts = slots[index].failedStarts
            if failedStarts >= configuration.startAttempts {
                slots[index].status.phase = .failed
                return (.failed, 0)
            }
            // Back off when it keeps dying before it serves: 0.1 s, 0.2 s, 0.4 s, ...
            let delay = failedStarts == 0 ? configuration.restartDelaySeconds : 0.1 * Double(1 << (failedStarts - 1))
            slots[index].status.phase = .restarting
            slots[index].restartAt = monotonicNanoseconds() + UInt64(delay * 1e9)
            return (.restarting, delay)
        }
        if phase == .failed {
            report(name, "died (\(cause)) \(configuration.startAttempts) times before serving: giving up on it")
        } else {
            report(name, "died (\(cause)); removed its socket; restarting" + (delay > 0 ? " in \(delay) s" : ""))
        }
        writeStatus()
    }

    private func restartDue() {
        guard !lock.withLock({ stopping }) else { return }
        let now = monotonicNanoseconds()
        let due = lock.withLock { slots.indices.filter { slots[$0].restartAt.map { $0 <= now } ?? false } }
        for index in due {
            let reader = lock.withLock { () -> SystemThread? in
                slots[index].status.restarts += 1
                slots[index].restartAt = nil
                defer { slots[index].reader = nil }
                return slots[index].reader
            }
            reader?.join()
            do { try launch(index) } catch {
                report(configuration.instanceName(index), "\(error)")
                lock.withLock {
                    slots[index].failedStarts += 1
                    slots[index].status.phase = slots[index].failedStarts >= configuration.startAttempts ? .failed : .restarting
                    if slots[index].status.phase == .restarting { slots[index].restartAt = monotonicNanoseconds() + 1_000_000_000 }
                }
            }
        }
    }

    // MARK: Reporting

    private func report(_ instance: String, _ message: String) {
        onEvent?(Event(instance: instance, message: message))
        let line = "\(Self.timestamp()) \(instance): \(message)\n"
        let path = configuration.stateDirectory + "/supervisor.log"
        let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return }
        defer { close(fd) }
        _ = Array(line.utf8).withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    }

    private func writeStatus() {
        let status = SupervisorStatus(service: configuration.service, supervisorProcessID: getpid(), instances: instances)
        try? FileAccess.replaceFile(configuration.stateDirectory + "/" + SupervisorStatus.fileName,
                                    with: Array(status.encoded.utf8), mode: 0o600)
    }

    /// "exited with status N" or "killed by SIGNAME".
    static func describe(exitStatus: Int32) -> String {
        guard exitStatus > 128 else { return "exited with status \(exitStatus)" }
        let signal = exitStatus - 128
        let names: [Int32: String] = [SIGKILL: "SIGKILL", SIGSEGV: "SIGSEGV", SIGABRT: "SIGABRT", SIGTERM: "SIGTERM",
                                      SIGBUS: "SIGBUS", SIGILL: "SIGILL", SIGINT: "SIGINT", SIGTRAP: "SIGTRAP"]
        return "killed by \(names[signal] ?? "signal \(signal)")"
    }

    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var parts = tm()
        var seconds = now.tv_sec
        gmtime_r(&seconds, &parts)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let millis = now.tv_nsec / 1_000_000
        let fraction = millis < 10 ? "00\(millis)" : millis < 100 ? "0\(millis)" : "\(millis)"
        return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)).\(fraction)Z"
    }
}
