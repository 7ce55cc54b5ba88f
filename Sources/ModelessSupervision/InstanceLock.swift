import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// `INSTANCE.lock` in the state directory: the mark that processes of an instance are alive.
///
/// The supervisor takes an exclusive `flock` on it and every run of the instance inherits the
/// locked descriptor, as does every process the instance starts; the lock lasts while any of
/// them holds it. So a supervisor that starts and cannot take the lock knows that processes
/// of the instance outlived the previous supervisor, and finds them: the processes holding
/// the file open, the process group and cgroup recorded in the file.
final class InstanceLock {
    let path: String
    private(set) var descriptor: Int32 = -1

    /// What the file records about the instance's current run.
    struct Record: Equatable {
        var processID: pid_t
        var processGroup: pid_t
        var controlGroup: String?

        var encoded: String { "\(processID) \(processGroup) \(controlGroup ?? "-")\n" }

        init(processID: pid_t, processGroup: pid_t, controlGroup: String?) {
            self.processID = processID
            self.processGroup = processGroup
            self.controlGroup = controlGroup
        }

        init?(_ text: String) {
            let fields = text.split(separator: " ", maxSplits: 2)
            guard fields.count == 3, let pid = pid_t(fields[0]), let group = pid_t(fields[1]), pid > 0, group > 0 else { return nil }
            self.init(processID: pid, processGroup: group, controlGroup: fields[2] == "-" ? nil : String(fields[2]))
        }
    }

    init(path: String) { self.path = path }

    deinit { release() }

    /// Takes the lock without waiting; false if some process holds it.
    func tryAcquire() throws(SupervisionError) -> Bool {
        if descriptor < 0 {
            descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
            guard descriptor >= 0 else { throw SupervisionError("cannot open \(path): \(Errno.current)") }
        }
        if flock(descriptor, LOCK_EX | LOCK_NB) == 0 { return true }
        let error = Errno.current
        guard error == .wouldBlock || error == .interrupted else {
            throw SupervisionError("cannot lock \(path): \(error)")
        }
        return false
    }

    /// The record of the run that locked it last, if any.
    func record() -> Record? { FileAccess.readTextIfPresent(path).flatMap(Record.init) }

    /// Records the current run (the file is locked by this supervisor).
    func write(_ record: Record) {
        guard descriptor >= 0 else { return }
        let bytes = Array(record.encoded.utf8)
        _ = ftruncate(descriptor, 0)
        _ = bytes.withUnsafeBytes { pwrite(descriptor, $0.baseAddress, $0.count, 0) }
    }

    /// Drops this supervisor's hold. Processes of the instance that inherited the descriptor
    /// keep the lock until they end.
    func release() {
        if descriptor >= 0 { close(descriptor) }
        descriptor = -1
    }

    /// Removes the recorded run's cgroup, and its service's parent group once that is empty,
    /// if an earlier supervisor left them (empty) behind.
    func removeRecordedControlGroup() {
        guard let path = record()?.controlGroup, let slash = path.lastIndex(of: "/") else { return }
        rmdir(path)
        rmdir(String(path[..<slash]))
    }

    /// Stops what earlier runs of the instances of `locks` left alive, which hold their
    /// locks: SIGTERM to the processes holding each file, its recorded process group (while
    /// one of them is still in it) and its recorded cgroup; SIGKILL to what is left after
    /// `graceSeconds`; and waits until every lock is free (at most 5 s after SIGKILL). Returns
    /// the processes it signalled, by lock; throws naming those that still hold a lock.
    static func stopSurvivors(of locks: [InstanceLock], graceSeconds: Double) throws(SupervisionError) -> [[pid_t]] {
        var stopped = Array(repeating: Set<pid_t>(), count: locks.count)
        var pending = Set(locks.indices)
        for (signal, seconds) in [(SIGTERM, graceSeconds), (SIGKILL, 5.0)] {
            for index in pending { stopped[index].formUnion(locks[index].signalSurvivors(signal)) }
            let deadline = monotonicNanoseconds() + UInt64(seconds * 1e9)
            while !pending.isEmpty && monotonicNanoseconds() < deadline {
                for index in pending where try locks[index].tryAcquire() && !locks[index].recordedGroupIsPopulated {
                    locks[index].removeRecordedControlGroup()
                    pending.remove(index)
                }
                if !pending.isEmpty { usleep(10_000) }
            }
            if pending.isEmpty { return stopped.map { $0.sorted() } }
        }
        let left = pending.sorted().map { "\(locks[$0].path) (pids \(ProcessTable.holders(of: locks[$0].path).map(String.init).joined(separator: ", ")))" }
        throw SupervisionError("processes of an earlier run still hold \(left.joined(separator: "; ")) after SIGKILL: stop them, then start the supervisor again")
    }

    /// Whether the recorded run's cgroup still holds processes (which may have closed the
    /// lock file).
    var recordedGroupIsPopulated: Bool {
        record()?.controlGroup.map { ControlGroup(path: $0).isPopulated } ?? false
    }

    /// Sends `signal` to the processes holding the file, to the recorded process group while
    /// one of them is in it (the number cannot have been reused for another group then), and
    /// to the recorded cgroup. Returns the processes signalled.
    private func signalSurvivors(_ signal: Int32) -> Set<pid_t> {
        let record = record()
        var signalled = Set(ProcessTable.holders(of: path))
        if let record, signalled.contains(where: { ProcessTable.entry(of: $0)?.processGroup == record.processGroup }) {
            signalled.formUnion(ProcessTable.members(ofGroup: record.processGroup))
            kill(-record.processGroup, signal)
        }
        if let controlGroup = record?.controlGroup.map(ControlGroup.init(path:)) {
            signalled.formUnion(controlGroup.processes)
            controlGroup.signalAll(signal)
        }
        for pid in signalled { kill(pid, signal) }
        return signalled
    }
}
