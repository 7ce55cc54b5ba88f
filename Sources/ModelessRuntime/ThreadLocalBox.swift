#if canImport(Glibc)
import Glibc
#endif

/// A value with a separate copy on each thread, nil until the thread sets it; for the
/// verifier's per-thread bookkeeping (off the fast path: only a verified runtime uses it).
final class ThreadLocalBox<Value>: @unchecked Sendable {
    private final class Slot { var value: Value; init(_ value: Value) { self.value = value } }
    private let key: pthread_key_t

    init() {
        var key = pthread_key_t()
        pthread_key_create(&key) { pointer in
            if let pointer { Unmanaged<AnyObject>.fromOpaque(pointer).release() }
        }
        self.key = key
    }

    deinit { pthread_key_delete(key) }

    /// This thread's value.
    var value: Value? {
        guard let pointer = pthread_getspecific(key) else { return nil }
        return (Unmanaged<AnyObject>.fromOpaque(pointer).takeUnretainedValue() as! Slot).value
    }

    /// Changes this thread's value in place, starting from `initial` when it has none.
    func update(initial: @autoclosure () -> Value, _ change: (inout Value) -> Void) {
        if let pointer = pthread_getspecific(key) {
            change(&(Unmanaged<AnyObject>.fromOpaque(pointer).takeUnretainedValue() as! Slot).value)
        } else {
            let slot = Slot(initial())
            change(&slot.value)
            pthread_setspecific(key, Unmanaged.passRetained(slot as AnyObject).toOpaque())
        }
    }
}

extension ThreadLocalBox where Value: RangeReplaceableCollection {
    func update(_ change: (inout Value) -> Void) { update(initial: Value(), change) }
}
