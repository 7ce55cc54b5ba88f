import CModelessShim
import ModelessSystem

/// The kernel's completion, as an event count: any code signals it (an ISR, a DPC, an
/// ordinary thread) without taking a lock, and ordinary threads wait for it at passive level.
///
/// A waiter checks its condition and waits only while the condition is false, re-checking after
/// each signal; a signal between the check and the wait is never lost, because the wait sleeps
/// only while the event's generation is still the one read before the check:
///
/// ```swift
/// let done = event.wait(timeout: .seconds(5)) { shared.withLock { $0.finished } }
/// ```
///
/// Waiting in an ISR or DPC, or with interrupts disabled or a ``SpinLock`` held, is reported
/// by the verifier. Make it with ``DriverRuntime/makeWaitEvent(_:)``.
public final class WaitEvent: @unchecked Sendable {
    /// The name given at ``DriverRuntime/makeWaitEvent(_:)``, for verifier reports.
    public let name: String
    let runtime: any DriverRuntime
    /// The runtime's verifier, read once: asking the runtime each time would retain it.
    let verifier: DriverVerifier?
    /// The generation (a futex word) and how many threads sleep on it.
    private let words = UnsafeMutablePointer<UInt32>.allocate(capacity: 2)

    init(name: String, runtime: any DriverRuntime) {
        self.name = name
        self.runtime = runtime
        verifier = runtime.verifier
        words.initialize(repeating: 0, count: 2)
    }

    deinit { words.deallocate() }

    /// Wakes every waiter to re-check its condition. Legal at any level; allocation-free, and
    /// a system call only when a thread is asleep.
    public func signal() {
        _ = modeless_fetch_add_seqcst32(words, 1)
        if modeless_load_seqcst32(words + 1) > 0 { _ = modeless_futex_wake(words, Int32.max) }
    }

    /// Waits at passive level until `condition` is true or `timeout` passes; returns whether
    /// the condition was true. `condition` runs on this thread after each signal.
    public func wait(timeout: Duration, function: StaticString = #function, until condition: () throws -> Bool) rethrows -> Bool {
        verifier?.willSleep(.waitEvent(name), at: function, in: runtime)
        let deadline = monotonicNanoseconds() + timeout.wholeNanoseconds
        while true {
            let generation = modeless_load_seqcst32(words)
            if try condition() { return true }
            let now = monotonicNanoseconds()
            guard now < deadline else { return false }
            _ = modeless_fetch_add_seqcst32(words + 1, 1)
            _ = modeless_futex_wait(words, generation, Int64(deadline - now))
            _ = modeless_fetch_add_seqcst32(words + 1, UInt32.max)  // minus one
        }
    }
}
