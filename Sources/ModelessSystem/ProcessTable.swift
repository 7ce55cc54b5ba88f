#if canImport(Glibc)
import Glibc
#endif

/// What `/proc` says about the running processes: which belong to a process group, which
/// hold a given file open, when a process started. For finding what an instance left behind.
public enum ProcessTable {
    /// One line of `/proc/PID/stat`, the fields used here.
    public struct Entry: Sendable, Equatable {
        /// The process id (field 1).
        public var processID: pid_t
        /// The state letter (`R`, `S`, `D`, `Z` for a zombie, ...).
        public var state: Character
        /// The process group it belongs to (field 5).
        public var processGroup: pid_t
        /// Clock ticks after boot at which it started: with the pid, names one process for good.
        public var startTime: UInt64

        /// Whether it has exited and only waits to be reaped.
        public var isDead: Bool { state == "Z" || state == "X" }
    }

    /// The pids in `/proc`.
    public static func processIDs() -> [pid_t] {
        ((try? FileAccess.listDirectory("/proc")) ?? []).compactMap { pid_t($0) }
    }

    /// Process `pid`'s entry, or nil if it does not exist.
    public static func entry(of pid: pid_t) -> Entry? {
        guard let bytes = try? FileAccess.readBytes("/proc/\(pid)/stat", limit: 4096),
              let close = bytes.lastIndex(of: UInt8(ascii: ")")) else { return nil }
        // After "pid (comm) ": state ppid pgrp session tty tpgid flags minflt cminflt majflt
        // cmajflt utime stime cutime cstime priority nice threads itrealvalue starttime ...
        let fields = String(decoding: bytes[(close + 1)...], as: UTF8.self).split(separator: " ")
        guard fields.count > 19, let state = fields[0].first, let group = pid_t(fields[2]), let start = UInt64(fields[19]) else {
            return nil
        }
        return Entry(processID: pid, state: state, processGroup: group, startTime: start)
    }

    /// The live (not zombie) processes in process group `group`.
    public static func members(ofGroup group: pid_t) -> [pid_t] {
        processIDs().filter { pid in entry(of: pid).map { $0.processGroup == group && !$0.isDead } ?? false }
    }

    /// The live processes with a descriptor open on the file at `path` (compared by device
    /// and inode, so a renamed or re-linked path still matches). Processes this user may not
    /// inspect are not seen.
    public static func holders(of path: String) -> [pid_t] {
        var target = stat()
        guard stat(path, &target) == 0 else { return [] }
        var found: [pid_t] = []
        for pid in processIDs() where pid != getpid() {
            let directory = "/proc/\(pid)/fd"
            guard let descriptors = try? FileAccess.listDirectory(directory) else { continue }
            for descriptor in descriptors {
                var opened = stat()
                if stat(directory + "/" + descriptor, &opened) == 0, opened.st_dev == target.st_dev, opened.st_ino == target.st_ino {
                    if entry(of: pid).map({ !$0.isDead }) ?? false { found.append(pid) }
                    break
                }
            }
        }
        return found
    }
}
