import ModelessLogical
import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// The claim one process holds on exporting a logical device: an exclusively locked file
/// beside the container directory (`…/modeless/exports/CONTAINER+DEVICE.lock`), holding the
/// holder's process and block device. The lock ends with its process however it ends, so a
/// crashed export never blocks the next one.
public final class ExportLock {
    /// The lock file's path, under ``directory(for:)``; it holds the holder's process id and block
    /// device while the claim lasts.
    public let path: String
    private let fd: Int32

    /// The directory of export claims for `containers` (its sibling `exports`).
    public static func directory(for containers: ContainerDirectory) -> String {
        let parent = containers.path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        return (parent.isEmpty ? "." : parent) + "/exports"
    }

    /// Claims `device` (a full `container/device` name); refuses if another process holds it.
    public convenience init(device: LogicalDeviceName, containers: ContainerDirectory = .standard) throws(UblkError) {
        try self.init(claim: device.container + "+" + device.device, what: device.description, containers: containers)
    }

    /// Claims `name` (a file name: `nvme+0000:00:06.0` for a controller served directly),
    /// described as `what` in a refusal; refuses if another process holds it.
    public convenience init(claim name: String, what: String, containers: ContainerDirectory = .standard) throws(UblkError) {
        try self.init(name, what: what, containers: containers, waiting: false)
    }

    /// Claims `name` like ``init(claim:what:containers:)``, but waits while another process
    /// holds it: a warm standby takes the claim the moment the serving process dies, and
    /// a signal that ends the process ends the wait.
    public convenience init(waitingFor name: String, what: String, containers: ContainerDirectory = .standard) throws(UblkError) {
        try self.init(name, what: what, containers: containers, waiting: true)
    }

    private init(_ name: String, what: String, containers: ContainerDirectory, waiting: Bool) throws(UblkError) {
        let directory = Self.directory(for: containers)
        do { try FileAccess.createDirectories(directory, mode: 0o700) } catch {
            throw UblkError(.system, "cannot create the export directory \(directory): \(error)")
        }
        path = directory + "/" + name + ".lock"
        let descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard descriptor >= 0 else { throw UblkError(.system, "cannot open \(path): \(Errno.current)") }
        var locked = flock(descriptor, waiting ? LOCK_EX : LOCK_EX | LOCK_NB) == 0
        while !locked && waiting && Errno.current == .interrupted { locked = flock(descriptor, LOCK_EX) == 0 }
        guard locked else {
            let error = Errno.current
            let holder = FileAccess.readTextIfPresent(path)?.trimmingBlanks() ?? ""
            Glibc.close(descriptor)
            if error == .wouldBlock {
                throw UblkError(
                    .alreadyExported,
                    "\(what) is already exported\(holder.isEmpty ? "" : " (\(holder))"): stop that export (SIGINT or SIGTERM to its process) first")
            }
            throw UblkError(.system, "cannot lock \(path): \(error)")
        }
        fd = descriptor
        previousRecord = FileAccess.readTextIfPresent(path)?.trimmingBlanks() ?? ""
    }

    /// What claim `name`'s holder recorded, read without taking the claim (empty if nothing).
    public static func record(of name: String, containers: ContainerDirectory = .standard) -> String {
        FileAccess.readTextIfPresent(directory(for: containers) + "/" + name + ".lock")?.trimmingBlanks() ?? ""
    }

    /// What the claim's previous holder recorded (empty if nothing, or it released the claim):
    /// a holder that died without releasing leaves its record for its successor.
    public let previousRecord: String

    /// The process that recorded the claim before (`... by process P`), if its record names one.
    public var previousProcess: pid_t? {
        let words = previousRecord.split(separator: " ")
        guard let at = words.lastIndex(of: "process"), at + 1 < words.count else { return nil }
        return pid_t(words[at + 1])
    }

    /// Waits until the previous holder (``previousProcess``) has ended completely, at most
    /// `seconds`; true if it has (or none is recorded). A claim is released while its dying
    /// holder is still closing its other descriptors (its VFIO group among them), so a
    /// successor that took the claim waits for the end of the whole process before it opens
    /// the device.
    public func waitForPreviousProcess(seconds: Double) -> Bool {
        guard let pid = previousProcess, pid != getpid() else { return true }
        guard let watcher = try? ProcessExitWatcher() else { return true }
        do { try watcher.watch(pid) } catch { return true }
        defer { watcher.forget(pid) }
        return !watcher.waitForExits(timeoutMilliseconds: Int32(seconds * 1000)).isEmpty
    }

    /// Records who holds the claim, for the next process that asks.
    public func record(_ text: String) {
        _ = ftruncate(fd, 0)
        let line = text + "\n"
        _ = line.withCString { pwrite(fd, $0, strlen($0), 0) }
    }

    /// Gives the claim up. With `keepingRecord` the record stays for the next holder (a
    /// server that failed to start keeps its predecessor's ublk device to recover); without,
    /// it is emptied.
    public func release(keepingRecord: Bool = false) {
        if !keepingRecord { _ = ftruncate(fd, 0) }
        Glibc.close(fd)
    }
}
