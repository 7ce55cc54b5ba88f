import ModelessSystem

/// The seed's reader-writer lock that stands for the interrupt enable state in user mode.
///
/// Driver code that shares data with its ISR disables interrupts by taking the read side;
/// the wait thread takes the write side around the real ISR. Implemented, as the seed
/// describes, with a reader counter and a writer counter: a reader enters when there is no
/// writer, a writer when there are neither readers nor writers. Waiting writers hold off new
/// readers, so a stream of disable/enable calls cannot starve interrupts.
final class InterruptLock: @unchecked Sendable {
    private struct Counters {
        var readers = 0
        var writers = 0
        var waitingWriters = 0
    }

    private let lock = ConditionLock()
    /// Guarded by `lock`; behind a pointer so that the interrupt path makes no exclusivity
    /// checks (class properties would each cost a `swift_beginAccess`).
    private let counters = UnsafeMutablePointer<Counters>.allocate(capacity: 1)

    init() { counters.initialize(to: Counters()) }
    deinit { counters.deallocate() }

    private var readers: Int {
        get { counters.pointee.readers }
        set { counters.pointee.readers = newValue }
    }
    private var writers: Int {
        get { counters.pointee.writers }
        set { counters.pointee.writers = newValue }
    }
    private var waitingWriters: Int {
        get { counters.pointee.waitingWriters }
        set { counters.pointee.waitingWriters = newValue }
    }

    func readLock() {
        lock.withLock {
            while writers > 0 || waitingWriters > 0 { lock.wait() }
            readers += 1
        }
    }

    func readUnlock() {
        lock.withLock {
            readers -= 1
            precondition(readers >= 0, "interrupts enabled more often than disabled")
            if readers == 0 { lock.broadcast() }
        }
    }

    func writeLock() {
        lock.withLock {
            waitingWriters += 1
            while readers > 0 || writers > 0 { lock.wait() }
            waitingWriters -= 1
            writers = 1
        }
    }

    func writeUnlock() {
        lock.withLock {
            writers = 0
            lock.broadcast()
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
