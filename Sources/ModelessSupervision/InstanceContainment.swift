import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// How a service's instances are kept apart and stopped as a whole: each instance leads its
/// own process group, and where the machine has a writable cgroup v2 hierarchy, each also
/// runs in its own cgroup, `modeless.SERVICE.PID.N/INSTANCE` below the supervisor's (N counts
/// the supervisors of this process), which catches the processes that leave the group
/// (`setsid`, daemons).
public enum InstanceContainment: Sendable, Equatable, CustomStringConvertible {
    /// A cgroup per instance, below `parent`.
    case controlGroup(parent: String)
    /// A process group per instance only; `reason` says why no cgroup is used.
    case processGroup(reason: String)

    /// The containment in words for `modeless supervise`'s start line and `modeless status`: the
    /// cgroup parent's path, or why each instance has only a process group.
    public var description: String {
        switch self {
        case .controlGroup(let parent): "cgroup v2 (\(parent)) and a process group per instance"
        case .processGroup(let reason): "a process group per instance (no cgroup: \(reason))"
        }
    }

    /// One word for the status file and `modeless status --json`.
    public var kind: String {
        switch self {
        case .controlGroup: "cgroup"
        case .processGroup: "process-group"
        }
    }

    /// The cgroup for `service`'s instances if one can be made below this process's cgroup,
    /// else process groups alone, with the reason.
    static func choose(service: String, useControlGroup: Bool) -> (InstanceContainment, ControlGroup?) {
        guard useControlGroup else { return (.processGroup(reason: "turned off in the configuration"), nil) }
        guard let own = ControlGroup.current() else {
            return (.processGroup(reason: "no cgroup v2 hierarchy is mounted"), nil)
        }
        do {
            let parent = try own.child("modeless.\(service).\(getpid()).\(SupervisorCount.next())")
            return (.controlGroup(parent: parent.path), parent)
        } catch {
            return (.processGroup(reason: "\(own.path) is not writable (\(error.errno))"), nil)
        }
    }
}

/// The processes of one run of an instance: its process group and, if the service has
/// cgroups, its cgroup.
struct InstanceGroup {
    let processGroup: pid_t
    let controlGroup: ControlGroup?

    /// Sends `signal` to every process of the instance.
    func signalAll(_ signal: Int32) {
        kill(-processGroup, signal)
        controlGroup?.signalAll(signal)
    }

    /// Whether no live process of the instance remains.
    var isEmpty: Bool {
        if let controlGroup, controlGroup.isPopulated { return false }
        // No process at all in the group (not even one waiting to be reaped): nothing to scan.
        if kill(-processGroup, 0) != 0 { return true }
        return ProcessTable.members(ofGroup: processGroup).isEmpty
    }
}

/// Numbers the supervisors of this process, so that two of them (a library user's, tests)
/// never share a cgroup, even for services of the same name.
enum SupervisorCount {
    private static let lock = ConditionLock()
    nonisolated(unsafe) private static var count = 0

    static func next() -> Int {
        lock.withLock {
            count += 1
            return count
        }
    }
}
