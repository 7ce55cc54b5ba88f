import CModelessShim

#if canImport(Glibc)
import Glibc
#endif

/// A program started in the background, with its output (stdout and stderr) readable line by
/// line: for supervising driver processes and for tests that kill them.
public final class ChildProcess: @unchecked Sendable {
    /// The child's process id: what to signal, and the leader of its process group when it has one.
    public let processID: pid_t
    /// The executable that runs: the program given, found in `PATH` when it was a bare name.
    public let program: String
    private let output: Int32
    private var buffered: [UInt8] = []
    private var exitStatus: Int32?
    /// Whether all of the output has been read: the process, and any it started, closed it.
    public private(set) var outputEnded = false
    private let lock = ConditionLock()
    /// The process group the process leads, if it was started in its own (``Containment``).
    public let processGroup: pid_t?
    /// The program's own process when it runs under a guard (``Containment/guarded``), whose
    /// pid is then ``processID``; else ``processID``.
    public let programProcessID: pid_t

    /// How a supervised process is kept apart and tied to its supervisor.
    public struct Containment: Sendable {
        /// The signal the process gets when the thread that started it ends
        /// (`PR_SET_PDEATHSIG`), or nil for none.
        public var deathSignal: Int32?
        /// An open `cgroup.procs` of the cgroup v2 group to start the process in, or nil.
        public var cgroupProcs: Int32?
        /// A descriptor the process inherits (across its exec), or nil.
        public var inherited: Int32?
        /// Whether the program runs under a guard (`modeless_spawn_guarded_instance`): then
        /// ``processID`` is the guard's, which leads the group, ends as the program does, and
        /// takes every process the program started with it when the program ends or when the
        /// thread that started it ends (``deathSignal`` is then not used);
        /// ``programProcessID`` is the program's.
        public var guarded: Bool

        /// A containment that kills the child with `deathSignal` (default `SIGKILL`) when the starting
        /// thread ends, optionally starts it in the cgroup whose `cgroup.procs` is open as
        /// `cgroupProcs`, and passes it `inherited` across its exec, under a guard when `guarded`. The descriptors stay the caller's.
        public init(deathSignal: Int32? = SIGKILL, cgroupProcs: Int32? = nil, inherited: Int32? = nil, guarded: Bool = false) {
            self.deathSignal = deathSignal
            self.cgroupProcs = cgroupProcs
            self.inherited = inherited
            self.guarded = guarded
        }
    }

    /// Starts `program` with `arguments`; `environment` entries are added to this process's.
    /// With `containment`, the process leads its own process group, and is started in the
    /// given cgroup, with the given death signal and inherited descriptor; its output is
    /// then also readable without blocking (``readAvailableLines()``).
    public init(_ program: String, _ arguments: [String], environment: [String: String] = [:],
                containment: Containment? = nil) throws(SystemError) {
        guard let executable = ProgramRunner.locate(program) else {
            throw SystemError("find program", program, errno: .noSuchFileOrDirectory)
        }
        self.program = executable
        var pipeEnds: [Int32] = [-1, -1]
        // Close-on-exec from the start: a child another thread spawns meanwhile must not
        // inherit the write end, or this child's output would never end.
        _ = try systemCall("pipe2", program) { modeless_pipe_cloexec(&pipeEnds) }
        let envp = Self.environment(adding: environment)
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        if let containment {
            var program: pid_t = -1
            let pid = containment.guarded
                ? modeless_spawn_guarded_instance(executable, argv, envp, pipeEnds[1], containment.inherited ?? -1,
                                                  containment.cgroupProcs ?? -1, &program)
                : modeless_spawn_instance(executable, argv, envp, pipeEnds[1], containment.inherited ?? -1,
                                          containment.cgroupProcs ?? -1, containment.deathSignal ?? 0)
            let spawnErrno = Errno.current
            close(pipeEnds[1])
            guard pid > 0 else {
                close(pipeEnds[0])
                throw SystemError("start", executable, errno: spawnErrno)
            }
            _ = fcntl(pipeEnds[0], F_SETFL, fcntl(pipeEnds[0], F_GETFL) | O_NONBLOCK)
            processID = pid
            processGroup = pid
            programProcessID = containment.guarded ? program : pid
            output = pipeEnds[0]
            return
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        actions.giveStandardDescriptors(output: pipeEnds[1])

        // The child starts with no signals blocked and default dispositions, whatever this
        // process (which may block SIGTERM to wait for it) has.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGINT, SIGTERM, SIGPIPE, SIGHUP] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var pid: pid_t = 0
        let spawnError = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        close(pipeEnds[1])
        guard spawnError == 0 else {
            close(pipeEnds[0])
            throw SystemError("posix_spawn", executable, errno: .init(rawValue: spawnError))
        }
        processID = pid
        processGroup = nil
        programProcessID = pid
        output = pipeEnds[0]
    }

    /// This process's environment with `environment`'s entries added or replaced, for execve.
    private static func environment(adding environment: [String: String]) -> [UnsafeMutablePointer<CChar>?] {
        var inherited: [String] = []
        var entry = environ
        while let variable = entry.pointee {
            let text = String(cString: variable)
            if let name = text.split(separator: "=", maxSplits: 1).first, environment[String(name)] == nil { inherited.append(text) }
            entry += 1
        }
        return (inherited + environment.map { "\($0.key)=\($0.value)" }).map { strdup($0) } + [nil]
    }

    deinit {
        if exitStatus == nil {
            kill(processID, SIGKILL)
            _ = try? wait()
        }
        close(output)
    }

    /// The next line of output, or nil at its end or after `seconds` without one.
    public func readLine(timeout seconds: Double = 30) -> String? {
        let deadline = monotonicNanoseconds() + UInt64(seconds * 1e9)
        while true {
            if let newline = buffered.firstIndex(of: 0x0A) {
                let line = String(decoding: buffered[..<newline], as: UTF8.self)
                buffered.removeSubrange(...newline)
                return line
            }
            let now = monotonicNanoseconds()
            guard now < deadline, !outputEnded else { return nil }
            var poller = pollfd(fd: output, events: Int16(POLLIN), revents: 0)
            let ready = poll(&poller, 1, Int32(min(1000, (deadline - now) / 1_000_000 + 1)))
            if ready <= 0 { continue }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let count = chunk.withUnsafeMutableBytes { read(output, $0.baseAddress, $0.count) }
            if count > 0 { buffered += chunk[0..<count] } else if count == 0 || ![.interrupted, .wouldBlock].contains(Errno.current) {
                outputEnded = true
                if buffered.isEmpty { return nil }
                defer { buffered.removeAll() }
                return String(decoding: buffered, as: UTF8.self)
            }
        }
    }

    /// The read end of the output pipe, to poll for ``readAvailableLines()``.
    public var outputDescriptor: Int32 { output }

    /// The complete lines of output that can be read now without waiting (the output of a
    /// process started with ``Containment`` does not block), and the unfinished last line
    /// once the output has ended. Never blocks on a process started with containment, and
    /// reads at most 64 KiB a call, so that a process that prints without pause cannot keep
    /// the caller here.
    public func readAvailableLines() -> [String] {
        var lines: [String] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        var budget = 16
        while !outputEnded && budget > 0 {
            budget -= 1
            let count = chunk.withUnsafeMutableBytes { read(output, $0.baseAddress, $0.count) }
            if count > 0 {
                buffered += chunk[0..<count]
                continue
            }
            if count < 0 && Errno.current == .interrupted { continue }
            if count < 0 && Errno.current == .wouldBlock { break }
            outputEnded = true
        }
        while let newline = buffered.firstIndex(of: 0x0A) {
            lines.append(String(decoding: buffered[..<newline], as: UTF8.self))
            buffered.removeSubrange(...newline)
        }
        if outputEnded && !buffered.isEmpty {
            lines.append(String(decoding: buffered, as: UTF8.self))
            buffered.removeAll()
        }
        return lines
    }

    /// Sends `signal` (SIGTERM, SIGKILL, ...).
    public func signal(_ signal: Int32) { kill(processID, signal) }

    /// The exit status if the process has ended (reaping it), or nil if it still runs.
    public func exitStatusIfEnded() -> Int32? {
        if let exitStatus { return exitStatus }
        var status: Int32 = 0
        guard waitpid(processID, &status, WNOHANG) == processID else { return nil }
        let result = ModelessSystem.exitStatus(fromWaitStatus: status)
        exitStatus = result
        return result
    }

    /// Waits for the process to end and returns its exit status (128 + signal if killed).
    @discardableResult
    public func wait() throws(SystemError) -> Int32 {
        if let exitStatus { return exitStatus }
        var status: Int32 = 0
        _ = try systemCall("waitpid", program) { waitpid(processID, &status, 0) }
        let result = ModelessSystem.exitStatus(fromWaitStatus: status)
        exitStatus = result
        return result
    }
}
