import Logging
import ModelessLogical
import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// Runs a service's instances, each a provider process and its own fault domain, and keeps
/// them running: it watches every instance through a pidfd; when one dies it logs the cause,
/// stops what the instance left (the rest of its process group and cgroup), removes its
/// socket once nothing serves it (the kernel has already released its VFIO device, IOMMU
/// mappings and eventfds with its file descriptors), and starts a replacement under the same
/// name, which resumes from the dead instance's state file. Consumers notice the death
/// through their connections and fail over (``ServiceClient``).
///
/// Each instance runs under a guard, the supervisor's direct child (see
/// `modeless_spawn_guarded_instance`): it leads the instance's process group and cgroup, is a
/// child subreaper, ends as the instance does, and when the supervisor ends (its death signal)
/// kills every process descended from the instance, so that nothing an instance started
/// outlives a supervisor killed with SIGKILL. If the guard alone is killed, the instance dies
/// with it (its own death signal) and the supervisor stops the rest as for any death.
///
/// One thread, started by ``start()``, does all of it: it starts every guard (so that their
/// death signal, which the kernel ties to the thread that started them, fires only when the
/// supervisor ends), reads the instances' output without blocking, notices deaths and start
/// timeouts, restarts, and stops everything on ``stop()``.
///
/// Every event goes to the `Logger` given at ``init(_:containers:logger:)`` (with the metadata
/// `service` and, for an instance's events, `instance`), to ``onEvent``, and to
/// `supervisor.log` in the state directory with its time and level. Levels: `info` for what
/// goes as planned (started, serving, stopped), `notice` for an instance that died and is
/// restarted, `warning` for a run contained less well than asked (no cgroup) or something left
/// behind, `error` for an instance given up on.
///
/// Usable as a library, or through `modeless supervise CONFIG`.
public final class Supervisor: @unchecked Sendable {
    /// Something that happened to an instance, for logging.
    public struct Event: Sendable {
        /// The instance (`SERVICE-N`), or the service for the supervisor's own events.
        public var instance: String
        /// How much it matters: see ``Supervisor``.
        public var level: Logger.Level
        /// What happened, in words.
        public var message: String

        /// An event of `instance` at `level`.
        public init(instance: String, level: Logger.Level = .info, message: String) {
            self.instance = instance
            self.level = level
            self.message = message
        }
    }

    /// The configuration the supervisor was made with (validated).
    public let configuration: SupervisorConfiguration
    /// Called for every event (start, serving, death with its cause, restart), on the
    /// supervisor's thread. The events also go to the logger and to `supervisor.log` in the
    /// state directory.
    public var onEvent: (@Sendable (Event) -> Void)?
    /// Called with every line an instance prints, on the supervisor's thread.
    public var onOutput: (@Sendable (String, String) -> Void)?
    /// How the instances are contained: a cgroup each where one could be made, else a
    /// process group each.
    public let containment: InstanceContainment
    /// Whether the device the instances drive is there to drive: nil when it is, else why not
    /// ("0000:01:00.0 was removed"). Set before ``start()``; without it, devices are not
    /// looked at. An instance that ends while its device is gone is not restarted (phase
    /// ``InstanceStatus/Phase/waitingForDevice``) until this says the device is back; such an
    /// end counts neither as a failed start nor as a quick death, and the device's return
    /// restarts the start limit's count.
    public var deviceAvailability: (@Sendable () -> String?)?

    private let lock = ConditionLock()
    private var slots: [Slot]
    private let watcher: ProcessExitWatcher
    private var watchThread: SystemThread?
    private var watchThreadID: pthread_t?
    private var stopping = false
    private var startup: StartupState = .notStarted
    private let containers: ContainerDirectory
    private let serviceGroup: ControlGroup?
    private var supervisorLock: Int32
    private let logger: Logger

    private enum StartupState {
        case notStarted, running, done, failed(SupervisionError)
    }

    /// One run of an instance: its process and the group of processes it may have started.
    private final class Run {
        let process: ChildProcess
        let group: InstanceGroup
        /// When it started, or for a promoted standby, when it became the instance.
        var startedAt: UInt64
        var served = false
        /// Set when the supervisor ended the run itself (start timeout), for its cause.
        var stoppedBecause: String?

        init(process: ChildProcess, group: InstanceGroup, startedAt: UInt64) {
            self.process = process
            self.group = group
            self.startedAt = startedAt
        }
    }

    private struct Slot {
        var status: InstanceStatus
        let lock: InstanceLock
        var policy: RestartPolicy
        /// The running process, if any.
        var run: Run?
        /// The warm standby, with ``SupervisorConfiguration/standby``: started once `run`
        /// serves, it becomes `run` when `run` dies.
        var standby: Run?
        /// When a standby may be started again after one died.
        var standbyRetryAt: UInt64?
        /// Standbys that died in a row without becoming the instance; at `startAttempts`, no
        /// more are started (the instance falls back to restarts).
        var standbyDeathsInARow = 0
        /// A run that ended whose other processes are being stopped; the socket is removed
        /// and the replacement started only once none is left.
        var ending: Run?
        var endedAt: UInt64 = 0
        var endingReported = false
        var restartAt: UInt64?
        var controlGroup: ControlGroup?
        /// Set when starting the instance in its cgroup failed: its runs use the process group alone.
        var cgroupUnusable = false

        /// `run` ended for `cause` at `now`: it becomes the ending run, whose leftovers are stopped
        /// before anything else starts.
        mutating func ended(_ run: Run, cause: String, at now: UInt64) {
            self.run = nil
            ending = run
            endedAt = now
            endingReported = false
            status.lastCause = cause
            status.processID = nil
        }
    }

    /// Checks the configuration, prepares the state directory (mode 0700) and takes the
    /// service's supervisor lock (`supervisor.lock`), so that one supervisor runs a service.
    /// Events are logged to `logger` (by default nowhere but `supervisor.log`), with the
    /// service's name in the metadata key `service`.
    public init(
        _ configuration: SupervisorConfiguration, containers: ContainerDirectory = .standard,
        logger: Logger = Logger(label: "modeless.supervisor", factory: { _ in SwiftLogNoOpLogHandler() })
    ) throws(SupervisionError) {
        try configuration.validate()
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "service"] = "\(configuration.service)"
        self.logger = logger
        self.containers = containers
        do { watcher = try ProcessExitWatcher() } catch { throw SupervisionError("cannot watch processes: \(error)") }
        do { try FileAccess.createDirectories(configuration.stateDirectory, mode: 0o700) } catch {
            throw SupervisionError("cannot create the state directory: \(error)")
        }
        let lockPath = configuration.stateDirectory + "/supervisor.lock"
        supervisorLock = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard supervisorLock >= 0 else { throw SupervisionError("cannot open \(lockPath): \(Errno.current)") }
        // `modeless status` takes the lock shared for an instant to see whether it is held.
        var locked = flock(supervisorLock, LOCK_EX | LOCK_NB) == 0
        for _ in 0..<10 where !locked {
            usleep(10_000)
            locked = flock(supervisorLock, LOCK_EX | LOCK_NB) == 0
        }
        guard locked else {
            close(supervisorLock)
            let holder = (try? SupervisorStatus.read(stateDirectory: configuration.stateDirectory)).map { " (pid \($0.supervisorProcessID))" } ?? ""
            throw SupervisionError("a supervisor\(holder) already runs \(configuration.service) in \(configuration.stateDirectory): stop it first")
        }
        (containment, serviceGroup) = InstanceContainment.choose(service: configuration.service, useControlGroup: configuration.useControlGroup)
        slots = configuration.instanceNames.map {
            Slot(status: InstanceStatus(name: $0, processID: nil, phase: .stopped, restarts: 0, lastCause: nil),
                 lock: InstanceLock(path: configuration.stateDirectory + "/" + $0 + ".lock"), policy: RestartPolicy(configuration))
        }
    }

    deinit {
        stop()
        releaseSupervisorLock()
    }

    /// The path of instance `name`'s state file.
    public func statePath(of name: String) -> String { configuration.stateDirectory + "/" + name + ".state" }

    /// Starts the supervisor's thread, which stops whatever an earlier supervisor's instances
    /// left running (see docs/supervision.md) and starts every instance. Throws if an instance
    /// cannot be started, or its name is served by a process this supervisor did not start.
    public func start() throws(SupervisionError) {
        let first = lock.withLock { () -> Bool in
            guard case .notStarted = startup, !stopping else { return false }
            startup = .running
            return true
        }
        guard first else { throw SupervisionError("this supervisor was already started") }
        do {
            watchThread = try SystemThread(name: "supervisor") { [unowned self] in self.watch() }
        } catch {
            lock.withLock { startup = .notStarted }
            throw SupervisionError("cannot start the supervisor's thread: \(error)")
        }
        let failure = lock.withLock { () -> SupervisionError? in
            while case .running = startup { lock.wait() }
            if case .failed(let error) = startup { return error }
            return nil
        }
        if let failure {
            watchThread?.join()
            watchThread = nil
            throw failure
        }
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

    /// Stops every instance: SIGTERM to all of its processes, SIGKILL to those left after
    /// `stopTimeoutSeconds` or once the instance's main process has ended, and waits until
    /// none is left (or 5 s after SIGKILL). Then removes their sockets and cgroups and
    /// releases the state directory. Never waits on an instance's output. Idempotent.
    public func stop() {
        let alreadyStopping = lock.withLock { () -> Bool in
            defer { stopping = true }
            return stopping
        }
        guard !alreadyStopping else { return }
        watcher.wake()
        // Called from an event or output callback, on the supervisor's thread itself: that
        // thread stops everything when the callback returns; it cannot wait for itself.
        if let watchThreadID = lock.withLock({ watchThreadID }), pthread_equal(watchThreadID, pthread_self()) != 0 { return }
        watchThread?.join()
        watchThread = nil
        // A supervisor that never started made its service's cgroup all the same.
        try? serviceGroup?.remove()
        releaseSupervisorLock()
    }

    /// Lets another supervisor run the service.
    private func releaseSupervisorLock() {
        lock.withLock {
            if supervisorLock >= 0 { close(supervisorLock) }
            supervisorLock = -1
        }
    }

    // MARK: The supervisor's thread

    private func watch() {
        lock.withLock { watchThreadID = pthread_self() }
        do throws(SupervisionError) {
            try startEveryInstance()
            lock.withLock {
                startup = .done
                lock.broadcast()
            }
        } catch {
            shutDown()
            lock.withLock {
                startup = .failed(error)
                lock.broadcast()
            }
            return
        }
        while !lock.withLock({ stopping }) {
            let runs = lock.withLock { slots.flatMap { [$0.run, $0.standby].compactMap { $0 } } }
            let (ended, readable) = watcher.waitForEvents(timeoutMilliseconds: nextTimeout(),
                                                          readable: runs.filter { !$0.process.outputEnded }.map(\.process.outputDescriptor))
            for run in runs where readable.contains(run.process.outputDescriptor) { forwardOutput(of: run) }
            for pid in ended { handleExit(of: pid) }
            let now = monotonicNanoseconds()
            enforceStartTimeouts(now: now)
            finishEndings(now: now)
            restartDue(now: now)
            startStandbys(now: now)
        }
        shutDown()
    }

    /// How long the thread may wait for the next event: briefly while an ended run's
    /// processes are being stopped, else until the next restart or start deadline (at most 1 s).
    private func nextTimeout() -> Int32 {
        let now = monotonicNanoseconds()
        return lock.withLock {
            // Leftovers usually end within milliseconds of SIGKILL; one in uninterruptible
            // sleep (a device being released) may take longer, and is then checked less often.
            if let ending = slots.filter({ $0.ending != nil }).map(\.endedAt).max() {
                return now > ending + 200_000_000 ? 50 : 5
            }
            var next = now + 1_000_000_000
            for slot in slots {
                if let at = slot.restartAt { next = min(next, at) }
                if let at = slot.standbyRetryAt { next = min(next, at) }
                if let run = slot.run, !run.served, run.stoppedBecause == nil {
                    next = min(next, run.startedAt + UInt64(configuration.startTimeoutSeconds * 1e9))
                }
            }
            return Int32(min(1000, max(1, (next > now ? next - now : 0) / 1_000_000 + 1)))
        }
    }

    /// Takes every instance's lock (stopping what an earlier supervisor's runs left), checks
    /// that no other process serves its name, and starts it.
    private func startEveryInstance() throws(SupervisionError) {
        report(configuration.service, "supervising \(configuration.service) (pid \(getpid())); containment: \(containment)")
        var held: [Int] = []
        for index in slots.indices {
            let instanceLock = slots[index].lock
            if try instanceLock.tryAcquire() && !instanceLock.recordedGroupIsPopulated {
                instanceLock.removeRecordedControlGroup()
            } else {
                held.append(index)
            }
        }
        if !held.isEmpty {
            let stopped = try InstanceLock.stopSurvivors(of: held.map { slots[$0].lock }, graceSeconds: configuration.stopTimeoutSeconds)
            for (index, pids) in zip(held, stopped) {
                report(configuration.instanceName(index), level: .warning,
                       "stopped \(pids.count) process(es) an earlier supervisor's run left (pids \(pids.map(String.init).joined(separator: ", ")))")
            }
        }
        for name in configuration.instanceNames where !removeSocketUnlessServed(name) {
            throw SupervisionError("\(name) is served by a process this supervisor did not start (\(containers.socketPath(name)) answers): stop it, then start the supervisor again")
        }
        for index in slots.indices { try launch(index, now: monotonicNanoseconds()) }
    }

    /// Starts instance `index` under its guard: in its own process group (and cgroup), the
    /// guard's death signal tied to this thread, holding the instance's lock file.
    /// A `standby` run gets `MODELESS_STANDBY=1`, its process group alone (the instance's
    /// cgroup is stopped as a whole when the serving run dies) and becomes the slot's standby.
    private func launch(_ index: Int, now: UInt64, standby: Bool = false) throws(SupervisionError) {
        let name = configuration.instanceName(index)
        var environment = configuration.environment
        if standby { environment["MODELESS_STANDBY"] = "1" }
        environment["MODELESS_INSTANCE"] = name
        environment["MODELESS_INSTANCE_STATE"] = statePath(of: name)
        environment["MODELESS_SERVICE_STATE_DIR"] = configuration.stateDirectory
        environment["MODELESS_CONTAINER_DIR"] = containers.path
        let (instanceLock, existingGroup, cgroupUnusable) = lock.withLock { (slots[index].lock, slots[index].controlGroup, slots[index].cgroupUnusable) }
        var controlGroup = existingGroup
        var procs: Int32?
        if let serviceGroup, !cgroupUnusable, !standby {
            do throws(SystemError) {
                let group: ControlGroup
                if let existingGroup { group = existingGroup } else { group = try serviceGroup.child(name) }
                controlGroup = group
                procs = try group.openProcs()
            } catch {
                report(name, level: .warning, "cannot use its cgroup (\(error)): this run is contained by its process group alone")
            }
        }
        defer { if let procs { close(procs) } }
        func spawn(cgroupProcs: Int32?) throws(SystemError) -> ChildProcess {
            try ChildProcess(configuration.command[0], Array(configuration.command.dropFirst()) + ["--container", name],
                             environment: environment,
                             containment: .init(cgroupProcs: cgroupProcs, inherited: instanceLock.descriptor, guarded: true))
        }
        let process: ChildProcess
        do {
            process = try spawn(cgroupProcs: procs)
        } catch {
            // Joining the cgroup can fail where creating it did not (a hierarchy whose
            // controllers forbid processes there): then the process group alone contains it.
            guard procs != nil, let retried = try? spawn(cgroupProcs: nil) else {
                throw SupervisionError("cannot start \(name) (\(configuration.command.joined(separator: " "))): \(error)")
            }
            report(name, level: .warning, "cannot start it in its cgroup (\(error)): it is contained by its process group alone")
            if let procs { close(procs) }
            procs = nil
            try? controlGroup?.remove()
            controlGroup = nil
            lock.withLock { slots[index].cgroupUnusable = true }
            process = retried
        }
        let run = Run(process: process, group: InstanceGroup(processGroup: process.processID, controlGroup: procs == nil ? nil : controlGroup),
                      startedAt: now)
        do { try watcher.watch(process.processID) } catch {
            run.group.signalAll(SIGKILL)
            _ = try? process.wait()
            throw SupervisionError("cannot watch \(name)'s guard (pid \(process.processID)): \(error)")
        }
        if standby {
            lock.withLock {
                slots[index].standby = run
                slots[index].standbyRetryAt = nil
            }
            report(name, "standby started (pid \(process.programProcessID), its guard \(process.processID))")
            return
        }
        instanceLock.write(.init(processID: process.programProcessID, processGroup: process.processID, controlGroup: run.group.controlGroup?.path))
        lock.withLock {
            slots[index].controlGroup = controlGroup
            slots[index].run = run
            slots[index].restartAt = nil
            slots[index].policy.started(at: now)
            slots[index].status.processID = process.programProcessID
            slots[index].status.phase = .starting
        }
        report(name, "started (pid \(process.programProcessID), its guard \(process.processID))")
        writeStatus()
    }

    /// Forwards the lines `run` has printed, noticing the one that says it serves.
    private func forwardOutput(of run: Run) {
        guard let index = lock.withLock({ slots.firstIndex { $0.run === run || $0.ending === run || $0.standby === run } }) else { return }
        let name = configuration.instanceName(index)
        for line in run.process.readAvailableLines() {
            onOutput?(name, line)
            guard line.hasPrefix("serving ") else { continue }
            // A standby may say it serves before its predecessor's exit is seen: it is
            // promoted as serving.
            if lock.withLock({ slots[index].standby === run }) {
                lock.withLock { run.served = true }
                continue
            }
            let changed = lock.withLock { () -> Bool in
                guard slots[index].run === run, slots[index].status.phase == .starting else { return false }
                run.served = true
                slots[index].status.phase = .serving
                lock.broadcast()
                return true
            }
            if changed {
                report(name, "serving")
                writeStatus()
            }
        }
    }

    private func handleExit(of pid: pid_t) {
        if let index = lock.withLock({ slots.firstIndex { $0.standby?.process.processID == pid } }) {
            standbyEnded(index)
            return
        }
        guard let index = lock.withLock({ slots.firstIndex { $0.run?.process.processID == pid } }),
              let run = lock.withLock({ slots[index].run }) else { return }
        let name = configuration.instanceName(index)
        forwardOutput(of: run)
        let exitStatus = run.process.exitStatusIfEnded() ?? ((try? run.process.wait()) ?? -1)
        let exit = Self.describe(exitStatus: exitStatus)
        // Whatever else the instance started goes with it, before a replacement can start.
        run.group.signalAll(SIGKILL)
        let now = monotonicNanoseconds()
        let cause = run.stoppedBecause.map { "\($0) (\(exit))" } ?? exit
        if let absence = deviceAbsence(afterExitStatus: exitStatus) {
            dropStandby(index)
            waitForDevice(index, run: run, cause: cause, absence: absence, now: now)
            return
        }
        if promoteStandby(index, replacing: run, cause: cause, now: now) { return }
        // No takeover (none, or the start limit refuses a start now): a standby left waiting
        // would take the device on its own.
        dropStandby(index)
        let (delay, refusal): (Double, String?) = lock.withLock {
            let delay = slots[index].policy.ended(startedAt: run.startedAt, at: now, served: run.served)
            let refusal = slots[index].policy.refusal(at: now + UInt64(delay * 1e9))
            slots[index].ended(run, cause: cause, at: now)
            if let refusal {
                slots[index].status.phase = .failed
                slots[index].status.failure = refusal
            } else {
                slots[index].status.phase = .restarting
                slots[index].restartAt = now + UInt64(delay * 1e9)
            }
            lock.broadcast()
            return (delay, refusal)
        }
        if let refusal {
            report(name, level: .error, "died (\(cause)); giving up on it: \(refusal)")
        } else {
            report(name, level: .notice, "died (\(cause)); restarting" + (delay > 0 ? " in \(delay) s" : ""))
        }
        finishEndings(now: now)
        writeStatus()
    }

    /// The serving run of instance `index` died: its standby, if it has one and the start
    /// limit allows a start now, becomes the instance at once. False if there is none.
    private func promoteStandby(_ index: Int, replacing run: Run, cause: String, now: UInt64) -> Bool {
        let name = configuration.instanceName(index)
        let promoted: Run? = lock.withLock {
            guard let standby = slots[index].standby else { return nil }
            // The restart path counts this end itself when the start limit refuses a start now.
            var policy = slots[index].policy
            _ = policy.ended(startedAt: run.startedAt, at: now, served: run.served)
            guard policy.refusal(at: now) == nil else { return nil }
            slots[index].policy = policy
            slots[index].ended(run, cause: cause, at: now)
            slots[index].standby = nil
            slots[index].standbyDeathsInARow = 0
            standby.startedAt = now
            slots[index].run = standby
            slots[index].policy.started(at: now)
            slots[index].status.restarts += 1
            slots[index].status.processID = standby.process.programProcessID
            slots[index].status.phase = standby.served ? .serving : .starting
            lock.broadcast()
            return standby
        }
        guard let promoted else { return false }
        lock.withLock { slots[index].lock }.write(.init(processID: promoted.process.programProcessID, processGroup: promoted.process.processID, controlGroup: nil))
        report(name, level: .notice, "died (\(cause)); its standby (pid \(promoted.process.programProcessID)) takes over")
        finishEndings(now: now)
        writeStatus()
        return true
    }

    /// Stops the standby of instance `index`, if any, and reaps it.
    private func dropStandby(_ index: Int) {
        guard let standby = lock.withLock({ () -> Run? in
            defer { slots[index].standby = nil }
            return slots[index].standby
        }) else { return }
        standby.group.signalAll(SIGKILL)
        _ = try? standby.process.wait()
        watcher.forget(standby.process.processID)
        report(configuration.instanceName(index), "its standby (pid \(standby.process.programProcessID)) stopped")
    }

    /// The standby of instance `index` ended before it was needed: another is started after
    /// a second, unless `startAttempts` died in a row.
    private func standbyEnded(_ index: Int) {
        let name = configuration.instanceName(index)
        guard let run = lock.withLock({ slots[index].standby }) else { return }
        forwardOutput(of: run)
        let exitStatus = run.process.exitStatusIfEnded() ?? ((try? run.process.wait()) ?? -1)
        run.group.signalAll(SIGKILL)
        let now = monotonicNanoseconds()
        let again = lock.withLock { () -> Bool in
            slots[index].standby = nil
            slots[index].standbyDeathsInARow += 1
            let again = slots[index].standbyDeathsInARow < configuration.startAttempts
            slots[index].standbyRetryAt = again ? now + 1_000_000_000 : nil
            return again
        }
        report(name, level: .warning, "its standby (pid \(run.process.programProcessID)) ended (\(Self.describe(exitStatus: exitStatus)))"
               + (again ? "; another starts in 1 s" : "; no more standbys: \(configuration.startAttempts) ended in a row (startAttempts)"))
    }

    /// Starts a standby for each instance that keeps one, serves, and has none.
    private func startStandbys(now: UInt64) {
        guard configuration.standby, !lock.withLock({ stopping }) else { return }
        let due = lock.withLock {
            slots.indices.filter { index in
                let slot = slots[index]
                return slot.standby == nil && slot.ending == nil && slot.run?.served == true && slot.status.phase == .serving
                    && slot.standbyDeathsInARow < configuration.startAttempts && slot.standbyRetryAt.map { $0 <= now } != false
            }
        }
        for index in due {
            do { try launch(index, now: now, standby: true) } catch {
                report(configuration.instanceName(index), level: .warning, "cannot start its standby: \(error)")
                lock.withLock {
                    slots[index].standbyDeathsInARow += 1
                    slots[index].standbyRetryAt = now + 1_000_000_000
                }
            }
        }
    }

    /// The run of instance `index` ended while its device is gone: no restart until the device
    /// is back (``restartDue(now:)`` checks), and the end does not count against the restart policy.
    private func waitForDevice(_ index: Int, run: Run, cause: String, absence: String, now: UInt64) {
        lock.withLock {
            slots[index].ended(run, cause: cause, at: now)
            slots[index].status.phase = .waitingForDevice
            slots[index].restartAt = now + Self.devicePollInterval
            lock.broadcast()
        }
        report(configuration.instanceName(index), "ended (\(cause)) with its device gone (\(absence)); waiting for the device to return")
        finishEndings(now: now)
        writeStatus()
    }

    /// How often an instance waiting for its device looks again.
    static let devicePollInterval: UInt64 = 200_000_000
    /// How long an orderly end (exit status 0: a driver that released its removed device) may
    /// precede the kernel's completing the removal.
    static let removalSettleTime: UInt64 = 3_000_000_000

    /// Why the device is gone, if it is, after an instance ended with `exitStatus`. A driver
    /// answering a removal releases its device and exits 0 just before the kernel takes the
    /// device off the bus (or unbinds it), so after such an end the device gets a moment to go.
    private func deviceAbsence(afterExitStatus exitStatus: Int32) -> String? {
        guard let deviceAvailability else { return nil }
        if let absence = deviceAvailability() { return absence }
        guard exitStatus == 0 else { return nil }
        let deadline = monotonicNanoseconds() + Self.removalSettleTime
        while monotonicNanoseconds() < deadline {
            usleep(50_000)
            if let absence = deviceAvailability() { return absence }
        }
        return nil
    }

    /// Kills the runs that have not served within the start timeout; their death then counts
    /// as a failed start.
    private func enforceStartTimeouts(now: UInt64) {
        let limit = UInt64(configuration.startTimeoutSeconds * 1e9)
        let late = lock.withLock { () -> [(Int, Run)] in
            slots.indices.compactMap { index in
                guard let run = slots[index].run, !run.served, run.stoppedBecause == nil, now - run.startedAt >= limit else { return nil }
                run.stoppedBecause = "did not report serving within \(RestartPolicy.seconds(configuration.startTimeoutSeconds)) s (startTimeoutSeconds)"
                return (index, run)
            }
        }
        for (index, run) in late {
            report(configuration.instanceName(index), level: .notice, "\(run.stoppedBecause!): stopping it")
            run.group.signalAll(SIGKILL)
        }
    }

    /// For every ended run: once none of its processes is left, removes its socket (unless
    /// something still answers there) and lets the replacement start.
    private func finishEndings(now: UInt64) {
        let endings = lock.withLock { slots.indices.compactMap { index in slots[index].ending.map { (index, $0) } } }
        for (index, run) in endings {
            let name = configuration.instanceName(index)
            guard run.group.isEmpty else {
                run.group.signalAll(SIGKILL)
                let reportNow = lock.withLock { () -> Bool in
                    guard !slots[index].endingReported, now > slots[index].endedAt + 1_000_000_000 else { return false }
                    slots[index].endingReported = true
                    return true
                }
                if reportNow { report(name, level: .notice, "waiting for the processes its last run left (group \(run.group.processGroup)) to end") }
                continue
            }
            forwardOutput(of: run)
            if !removeSocketUnlessServed(name) {
                report(name, level: .warning, "\(containers.socketPath(name)) still answers after the instance's processes ended: left in place")
            }
            lock.withLock { slots[index].ending = nil }
        }
    }

    private func restartDue(now: UInt64) {
        let due = lock.withLock {
            slots.indices.filter { slots[$0].ending == nil && slots[$0].restartAt.map { $0 <= now } == true }
        }
        for index in due {
            let name = configuration.instanceName(index)
            if let absence = deviceAvailability?() {
                let first = lock.withLock { () -> Bool in
                    defer {
                        slots[index].status.phase = .waitingForDevice
                        slots[index].restartAt = now + Self.devicePollInterval
                    }
                    return slots[index].status.phase != .waitingForDevice
                }
                if first {
                    report(name, "waiting for its device to return (\(absence))")
                    writeStatus()
                }
                continue
            }
            if lock.withLock({ () -> Bool in
                guard slots[index].status.phase == .waitingForDevice else { return false }
                slots[index].policy.deviceReturned()
                return true
            }) {
                report(name, "its device is back: starting it")
            }
            if let refusal = lock.withLock({ slots[index].policy.refusal(at: now) }) {
                lock.withLock {
                    slots[index].restartAt = nil
                    slots[index].status.phase = .failed
                    slots[index].status.failure = refusal
                    lock.broadcast()
                }
                report(name, level: .error, "giving up on it: \(refusal)")
                writeStatus()
                continue
            }
            lock.withLock { slots[index].status.restarts += 1 }
            do { try launch(index, now: now) } catch {
                report(name, level: .warning, "\(error)")
                lock.withLock {
                    slots[index].policy.couldNotStart()
                    if let refusal = slots[index].policy.refusal(at: now) {
                        slots[index].restartAt = nil
                        slots[index].status.phase = .failed
                        slots[index].status.failure = refusal
                    } else {
                        slots[index].restartAt = now + 1_000_000_000
                    }
                    lock.broadcast()
                }
                writeStatus()
            }
        }
    }

    /// Stops every run (see ``stop()``), removes the sockets, cgroups and locks.
    private func shutDown() {
        let began = monotonicNanoseconds()
        let runs = lock.withLock { slots.flatMap { [$0.run, $0.standby].compactMap { $0 } } }
        for run in runs { run.group.signalAll(SIGTERM) }
        let graceEnd = monotonicNanoseconds() + UInt64(configuration.stopTimeoutSeconds * 1e9)
        var alive = runs
        while !alive.isEmpty && monotonicNanoseconds() < graceEnd {
            let (_, readable) = watcher.waitForEvents(timeoutMilliseconds: 10, readable: alive.filter { !$0.process.outputEnded }.map(\.process.outputDescriptor))
            for run in alive where readable.contains(run.process.outputDescriptor) { forwardOutput(of: run) }
            alive.removeAll { $0.process.exitStatusIfEnded() != nil }
        }
        let all = runs + lock.withLock { slots.compactMap(\.ending) }
        for run in all { run.group.signalAll(SIGKILL) }
        let killEnd = monotonicNanoseconds() + 5_000_000_000
        for run in all {
            while run.process.exitStatusIfEnded() == nil && monotonicNanoseconds() < killEnd { usleep(2_000) }
            while !run.group.isEmpty && monotonicNanoseconds() < killEnd {
                run.group.signalAll(SIGKILL)
                usleep(2_000)
            }
            forwardOutput(of: run)
            watcher.forget(run.process.processID)
        }
        for index in slots.indices {
            let name = configuration.instanceName(index)
            _ = removeSocketUnlessServed(name)
            let (instanceLock, controlGroup) = lock.withLock { () -> (InstanceLock, ControlGroup?) in
                slots[index].run = nil
                slots[index].standby = nil
                slots[index].ending = nil
                slots[index].restartAt = nil
                slots[index].status.processID = nil
                if slots[index].status.phase != .failed { slots[index].status.phase = .stopped }
                return (slots[index].lock, slots[index].controlGroup)
            }
            try? controlGroup?.remove()
            instanceLock.release()
        }
        try? serviceGroup?.remove()
        lock.withLock { lock.broadcast() }
        let left = all.filter { !$0.group.isEmpty }.map(\.group.processGroup)
        report(configuration.service, level: left.isEmpty ? .info : .warning,
               "stopped in \(Double((monotonicNanoseconds() - began) / 1_000_000) / 1000) s"
               + (left.isEmpty ? "" : "; processes of groups \(left.map(String.init).joined(separator: ", ")) did not end after SIGKILL"))
        writeStatus()
        releaseSupervisorLock()
    }

    /// Removes instance `name`'s socket unless a process still listens there; true if no
    /// socket is left.
    private func removeSocketUnlessServed(_ name: String) -> Bool {
        let path = containers.socketPath(name)
        var info = stat()
        guard lstat(path, &info) == 0 else { return true }
        if let probe = try? UnixSocket.connect(to: path) {
            probe.close()
            return false
        }
        unlink(path)
        return true
    }

    // MARK: Reporting

    private func report(_ instance: String, level: Logger.Level = .info, _ message: String) {
        if instance == configuration.service {
            logger.log(level: level, "\(message)")
        } else {
            logger.log(level: level, "\(message)", metadata: ["instance": "\(instance)"])
        }
        onEvent?(Event(instance: instance, level: level, message: message))
        let line = "\(Self.timestamp()) \(level) \(instance): \(message)\n"
        let path = configuration.stateDirectory + "/supervisor.log"
        let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return }
        defer { close(fd) }
        _ = Array(line.utf8).withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    }

    private func writeStatus() {
        let detail: String = switch containment {
        case .controlGroup(let parent): parent
        case .processGroup(let reason): reason
        }
        let status = SupervisorStatus(service: configuration.service, supervisorProcessID: getpid(), instances: instances,
                                      containment: containment.kind, containmentDetail: detail)
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
