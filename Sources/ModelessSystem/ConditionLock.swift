#if canImport(Glibc)
import Glibc
#endif

/// A pthread mutex with one condition variable, for the few places that must block a thread
/// until state changes (the interrupt lock, DPC queues, the emulated interrupt controller).
public final class ConditionLock: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    /// A lock whose condition's timed waits use `CLOCK_MONOTONIC`, so that a change of the wall
    /// clock never shortens or stretches a timeout.
    public init() {
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    /// Takes the mutex (`pthread_mutex_lock`), blocking until it is free. Not reentrant.
    public func lock() { pthread_mutex_lock(mutex) }
    /// Releases the mutex (`pthread_mutex_unlock`); the calling thread must hold it.
    public func unlock() { pthread_mutex_unlock(mutex) }

    /// Waits for a broadcast or signal; the lock must be held, and is held again on return.
    public func wait() { pthread_cond_wait(condition, mutex) }

    /// Waits at most `nanoseconds`; returns false on timeout.
    public func wait(nanoseconds: UInt64) -> Bool {
        var deadline = timespec()
        clock_gettime(CLOCK_MONOTONIC, &deadline)
        let total = UInt64(deadline.tv_nsec) + nanoseconds
        deadline.tv_sec += Int(total / 1_000_000_000)
        deadline.tv_nsec = Int(total % 1_000_000_000)
        return pthread_cond_timedwait(condition, mutex, &deadline) == 0
    }

    /// Wakes every thread waiting on the condition (`pthread_cond_broadcast`); call it with the
    /// lock held after changing the state they wait for.
    public func broadcast() { pthread_cond_broadcast(condition) }
    /// Wakes one thread waiting on the condition (`pthread_cond_signal`), when any one of them can
    /// take the change.
    public func signal() { pthread_cond_signal(condition) }

    /// Runs `body` with the mutex held and releases it however `body` ends; returns what `body`
    /// returns and rethrows what it throws.
    @inline(__always)
    public func withLock<Result, Failure: Error>(_ body: () throws(Failure) -> Result) throws(Failure) -> Result {
        lock()
        defer { unlock() }
        return try body()
    }
}
