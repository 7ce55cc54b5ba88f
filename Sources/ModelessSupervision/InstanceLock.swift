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

    /// Stops what an earlier supervisor's run of the instance left alive, which holds the lock:
    /// SIGTERM to the processes holding the file, the recorded process group (if one of them
    /// is still in it) and the recorded cgroup; SIGKILL after `graceSeconds`; and waits until
    /// the lock is free. Returns the processes it stopped; throws if the lock stays held.
    func stopSurvivors(graceSeconds: Double) throws(SupervisionError) -> [pid_t] {
        let record = record()
        let controlGroup = record?.controlGroup.map(ControlGroup.init(path:))
        var stopped = Set<pid_t>()
        func signalSurvivors(_ signal: Int32) {
            let holders = ProcessTable.holders(of: path)
            stopped.formUnion(holders)
            for pid in holders {
                // The recorded group is signalled only while a holder is in it: the number
                // cannot have been reused for another group then.
                if let record, ProcessTable.entry(of: pid)?.processGroup == record.processGroup { kill(-record.processGroup, signal) }
                kill(pid, signal)
            }
            if let controlGroup {
                stopped.formUnion(controlGroup.processes)
                controlGroup.signalAll(signal)
            }
        }
        for (signal, seconds) in [(SIGTERM, graceSeconds), (SIGKILL, 5.0)] {
            signalSurvivors(signal)
            let deadline = monotonicNanoseconds() + UInt64(seconds * 1e9)
            while monotonicNanoseconds() < deadline {
                if try tryAcquire() && !(controlGroup?.isPopulated ?? false) {
                    removeRecordedControlGroup()
                    return stopped.sorted()
                }
                usleep(10_000)
            }
        }
        let left = ProcessTable.holders(of: path)
        throw SupervisionError("processes \(left.map(String.init).joined(separator: ", ")) of an earlier run still hold \(path) after SIGKILL: stop them, then start the supervisor again")
    }
}
