#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// An integer with a separate value on each thread, zero until the thread sets it: the
/// nesting depth of disabled interrupts, the running ISR or DPC, which DPC queue an interrupt
/// thread drains.
///
/// A value holding only its key, so that reading it from the interrupt path retains nothing;
/// the key belongs to the ``ThreadLocalKeys`` that made it.
struct ThreadLocalInteger: @unchecked Sendable {
    let key: pthread_key_t

    /// This thread's value.
    @inline(__always)
    var current: Int { Int(bitPattern: pthread_getspecific(key)) }

    /// Sets this thread's value.
    @inline(__always)
    func set(_ value: Int) {
        pthread_setspecific(key, UnsafeRawPointer(bitPattern: value))
    }

    /// Adds `delta` to this thread's value, which must stay at or above zero (a nesting depth
    /// is never left more often than entered), and returns it.
    func add(_ delta: Int) -> Int {
        let value = current + delta
        precondition(value >= 0, "a nesting depth was left more often than entered on this thread")
        set(value)
        return value
    }
}

/// The thread-local keys of one runtime, deleted with it.
final class ThreadLocalKeys: @unchecked Sendable {
    private let keys = Mutex<[pthread_key_t]>([])

    /// A new thread-local integer, zero on every thread.
    func make() -> ThreadLocalInteger {
        var key = pthread_key_t()
        let result = pthread_key_create(&key, nil)
        precondition(result == 0, "pthread_key_create failed (\(result)): too many thread-local keys in this process")
        keys.withLock { $0.append(key) }
        return ThreadLocalInteger(key: key)
    }

    deinit {
        for key in keys.withLock({ $0 }) { pthread_key_delete(key) }
    }
}
