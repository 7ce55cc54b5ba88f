import CModelessShim

#if canImport(Glibc)
import Glibc
#endif

/// Waits for any of several processes to end, through a pidfd per process (the kernel makes
/// it readable when the process exits; no signal handlers and no polling of `/proc`), plus an
/// eventfd that ``wake()`` writes so that another thread can interrupt the wait.
public final class ProcessExitWatcher: @unchecked Sendable {
    private let lock = ConditionLock()
    private var watched: [pid_t: Int32] = [:]
    private let waker: EventNotifier

    /// A watcher with no process yet and the eventfd ``wake()`` writes to.
    /// - Throws: ``SystemError`` when the eventfd cannot be created (the process is out of
    ///   descriptors).
    public init() throws(SystemError) {
        waker = try EventNotifier(nonBlocking: true)
    }

    deinit {
        for fd in watched.values { close(fd) }
        waker.close()
    }

    /// Starts watching `pid` (a child of this process or any process this user may signal).
    public func watch(_ pid: pid_t) throws(SystemError) {
        let fd = try systemCall("pidfd_open", "process \(pid)") { modeless_pidfd_open(pid) }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        lock.withLock {
            if let old = watched.updateValue(fd, forKey: pid) { close(old) }
        }
        try? waker.signal()
    }

    /// Stops watching `pid` and closes its pidfd.
    public func forget(_ pid: pid_t) {
        lock.withLock { if let fd = watched.removeValue(forKey: pid) { close(fd) } }
    }

    /// Interrupts a ``waitForExits(timeoutMilliseconds:)`` in another thread.
    public func wake() { try? waker.signal() }

    /// Blocks until a watched process has ended, ``wake()`` is called or the timeout passes
    /// (-1: no timeout). Returns the processes that ended; they are no longer watched (reap
    /// children with `waitpid` to learn their status).
    public func waitForExits(timeoutMilliseconds: Int32 = -1) -> [pid_t] {
        waitForEvents(timeoutMilliseconds: timeoutMilliseconds, readable: []).ended
    }

    /// As ``waitForExits(timeoutMilliseconds:)``, and also returns when one of `descriptors`
    /// is readable (or at its end): the processes that ended and the descriptors readable.
    public func waitForEvents(timeoutMilliseconds: Int32, readable descriptors: [Int32]) -> (ended: [pid_t], readable: [Int32]) {
        let snapshot = lock.withLock { watched }
        var polled = [pollfd(fd: waker.fd, events: Int16(POLLIN), revents: 0)]
        var owners: [pid_t] = []
        for (pid, fd) in snapshot {
            polled.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0))
            owners.append(pid)
        }
        for fd in descriptors { polled.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0)) }
        let ready = poll(&polled, nfds_t(polled.count), timeoutMilliseconds)
        guard ready > 0 else { return ([], []) }
        if polled[0].revents != 0 { _ = try? waker.wait() }
        var ended: [pid_t] = []
        for (index, pid) in owners.enumerated() where polled[index + 1].revents != 0 {
            ended.append(pid)
            forget(pid)
        }
        let readable = descriptors.indices.filter { polled[1 + owners.count + $0].revents != 0 }.map { descriptors[$0] }
        return (ended, readable)
    }
}
