import CModelessShim
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// What a finished program returned.
public struct ProgramResult: Sendable, Equatable {
    /// The exit status, or 128 + signal number if a signal ended it.
    public var status: Int32
    /// Its standard output and standard error, interleaved as written.
    public var output: String

    /// A result of exit status `status` that printed `output`.
    public init(status: Int32, output: String) {
        self.status = status
        self.output = output
    }
}

/// Runs helper programs such as `modprobe` with `posix_spawn`, capturing their output.
public enum ProgramRunner {
    /// Directories searched for a program named without a slash, after `PATH`.
    public static let systemDirectories = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]

    /// The full path of `name`, searching `PATH` and then the system directories; `nil` if not found.
    public static func locate(_ name: String) -> String? {
        if name.contains("/") { return access(name, X_OK) == 0 ? name : nil }
        let path = getenv("PATH").map { String(cString: $0) } ?? ""
        let directories = path.split(separator: ":").map(String.init) + systemDirectories
        for directory in directories where !directory.isEmpty {
            let candidate = "\(directory)/\(name)"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }

    /// The path of program `name` in the build directory of the running executable (or of the
    /// running test bundle, `NAME.xctest`): how tests and commands find `modeless` and each other.
    public static func builtProgram(_ name: String) throws(SystemError) -> String {
        let running = try FileAccess.readLink("/proc/self/exe")
        var directory = running.split(separator: "/").dropLast()
        if directory.last?.hasSuffix(".xctest") == true { directory = directory.dropLast() }
        return "/" + directory.joined(separator: "/") + "/" + name
    }

    /// Runs `program` with `arguments`, waits for it, and returns its status and output.
    ///
    /// - Throws: ``SystemError`` if the program cannot be found or started.
    public static func run(_ program: String, _ arguments: [String]) throws(SystemError) -> ProgramResult {
        guard let executable = locate(program) else {
            throw SystemError("find program", program, errno: .noSuchFileOrDirectory)
        }
        var pipeEnds: [Int32] = [-1, -1]
        // Close-on-exec from the start: a child another thread spawns meanwhile must not
        // inherit the write end, or this program's output would never end.
        _ = try systemCall("pipe2", program) { modeless_pipe_cloexec(&pipeEnds) }
        let (readEnd, writeEnd) = (pipeEnds[0], pipeEnds[1])

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        actions.giveStandardDescriptors(output: writeEnd)

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let spawnError = posix_spawn(&pid, executable, &actions, nil, argv, environ)
        close(writeEnd)
        guard spawnError == 0 else {
            close(readEnd)
            throw SystemError("posix_spawn", executable, errno: .init(rawValue: spawnError))
        }

        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(readEnd, $0.baseAddress, $0.count) }
            if count > 0 { output.append(contentsOf: chunk[0..<count]); continue }
            if count < 0 && Errno.current == .interrupted { continue }
            break
        }
        close(readEnd)

        var status: Int32 = 0
        _ = try systemCall("waitpid", executable) { waitpid(pid, &status, 0) }
        return ProgramResult(status: exitStatus(fromWaitStatus: status), output: String(decoding: output, as: UTF8.self))
    }
}

/// A process's exit status from the status `waitpid` reported: its exit code, or 128 plus
/// the signal that killed it, as shells report it.
func exitStatus(fromWaitStatus status: Int32) -> Int32 {
    (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
}
