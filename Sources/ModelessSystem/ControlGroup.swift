#if canImport(Glibc)
import Glibc
#endif

/// A cgroup v2 directory: the processes started in it and every process they start stay in
/// it, so the whole set can be listed, signalled and killed at once (`cgroup.kill`), and its
/// emptiness read (`cgroup.events`), without tracking the processes one by one.
public struct ControlGroup: Sendable, Equatable {
    /// The directory, under the cgroup2 mount.
    public let path: String

    /// The cgroup at `path`, a directory under the cgroup2 mount; nothing is checked or created.
    public init(path: String) { self.path = path }

    /// The cgroup this process is in, if the cgroup v2 hierarchy is mounted (on its own or
    /// beside v1 hierarchies, as `/sys/fs/cgroup/unified`); nil otherwise.
    public static func current() -> ControlGroup? {
        guard let mount = cgroup2Mount(),
              let line = FileAccess.readTextIfPresent("/proc/self/cgroup")?.split(separator: "\n").first(where: { $0.hasPrefix("0::") })
        else { return nil }
        let own = String(line.dropFirst(3))
        return ControlGroup(path: own == "/" ? mount : mount + own)
    }

    /// Where the cgroup2 filesystem is mounted, from `/proc/self/mountinfo`.
    static func cgroup2Mount() -> String? {
        guard let text = FileAccess.readTextIfPresent("/proc/self/mountinfo") else { return nil }
        for line in text.split(separator: "\n") {
            // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
            let halves = line.split(separator: " - ", maxSplits: 1)
            guard halves.count == 2, halves[1].hasPrefix("cgroup2 ") else { continue }
            let fields = halves[0].split(separator: " ")
            if fields.count >= 5 { return String(fields[4]) }
        }
        return nil
    }

    /// The child group `name`, created (mode 0755) if it does not exist.
    public func child(_ name: String) throws(SystemError) -> ControlGroup {
        let child = ControlGroup(path: path + "/" + name)
        if mkdir(child.path, 0o755) != 0 && Errno.current != .fileExists {
            throw SystemError("create cgroup", child.path, errno: .current)
        }
        return child
    }

    /// `cgroup.procs` opened for writing, to start a process in this group
    /// (``ChildProcess/Containment/cgroupProcs``). The caller closes it.
    public func openProcs() throws(SystemError) -> Int32 {
        let file = path + "/cgroup.procs"
        return try systemCall("open", file) { open(file, O_WRONLY | O_CLOEXEC) }
    }

    /// The processes in this group (not in its children).
    public var processes: [pid_t] {
        (FileAccess.readTextIfPresent(path + "/cgroup.procs") ?? "").split(separator: "\n").compactMap { pid_t($0) }
    }

    /// Whether a process is in this group or a child of it (`cgroup.events`: `populated 1`).
    /// A group that no longer exists is empty.
    public var isPopulated: Bool {
        guard let events = FileAccess.readTextIfPresent(path + "/cgroup.events") else { return false }
        return events.split(separator: "\n").contains("populated 1")
    }

    /// Sends `signal` to every process in the group; SIGKILL goes through `cgroup.kill`
    /// (Linux 5.14), which also reaches processes forked meanwhile.
    public func signalAll(_ signal: Int32) {
        if signal == SIGKILL, (try? FileAccess.writeText("1", to: path + "/cgroup.kill")) != nil { return }
        for pid in processes { kill(pid, signal) }
    }

    /// Removes the group's directory; fails (EBUSY) while it holds processes.
    public func remove() throws(SystemError) {
        _ = try systemCall("rmdir", path) { rmdir(path) }
    }
}
