/// An integer with a separate value on each thread, zero until the thread sets it: the
/// nesting depth of disabled interrupts, and which DPC queue an interrupt thread drains.
final class ThreadLocalInteger: @unchecked Sendable {
    /// A `let`, so that reading it needs no exclusivity check.
    private let key: pthread_key_t

    init() {
        var key = pthread_key_t()
        pthread_key_create(&key, nil)
        self.key = key
    }
    deinit { pthread_key_delete(key) }

    /// This thread's value.
    var current: Int { Int(bitPattern: pthread_getspecific(key)) }

    /// Sets this thread's value.
    func set(_ value: Int) {
        pthread_setspecific(key, UnsafeRawPointer(bitPattern: value))
    }

    /// Adds `delta` to this thread's value, which must stay at or above zero (a nesting depth
    /// is never left more often than entered), and returns it.
    func add(_ delta: Int) -> Int {
        let value = current + delta
        precondition(value >= 0, "a nesting depth was left more often than entered on this thread (interrupts enabled more often than disabled?)")
        set(value)
        return value
    }
}

#if canImport(Glibc)
import Glibc
#endif
