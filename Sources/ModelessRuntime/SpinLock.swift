#if canImport(Glibc)
import Glibc
#endif
import CModelessShim
import Synchronization

/// The kernel's interrupt-safe spin lock (`spin_lock_irqsave`), guarding `State` that a
/// driver shares with its ISR and DPCs.
///
/// Taking it disables interrupts on the calling thread first (the runtime's
/// ``DriverRuntime/disableInterrupts()``: in user mode the interrupt lock's read side, in the
/// kernel emulation the masked controller), then spins for the lock word; so the ISR can never
/// run on a thread that holds it, and never waits for a holder that it interrupted. Inside an
/// ISR interrupts are already disabled and taking it only spins. Hold it for a few
/// instructions: never sleep, wait or call into the system while holding it.
///
/// Make it with ``DriverRuntime/makeSpinLock(_:_:)``.
public final class SpinLock<State>: @unchecked Sendable {
    /// The lock's class name, for the verifier's reports.
    public let name: String
    @usableFromInline let runtime: any DriverRuntime
    /// The runtime's verifier, read once: asking the runtime each time would retain it.
    @usableFromInline let verifier: DriverVerifier?
    @usableFromInline let identity: LockIdentity
    @usableFromInline let word = Atomic<Bool>(false)
    /// The guarded state, behind a pointer: the lock is what keeps accesses exclusive, so a
    /// class property's dynamic exclusivity check (`swift_beginAccess`) would only cost time.
    @usableFromInline let state: UnsafeMutablePointer<State>

    init(name: String, state: State, runtime: any DriverRuntime) {
        self.name = name
        self.state = .allocate(capacity: 1)
        self.state.initialize(to: state)
        self.runtime = runtime
        verifier = runtime.verifier
        identity = LockIdentity(name: name, kind: .spin)
    }

    deinit {
        state.deinitialize(count: 1)
        state.deallocate()
    }

    /// Runs `body` with interrupts disabled and the lock held, on the guarded state.
    /// `function` names the call site in the verifier's reports.
    @inlinable
    public func withLock<Result>(function: StaticString = #function,
                                 _ body: (inout State) throws -> Result) rethrows -> Result {
        acquire(function)
        defer { release(function) }
        return try body(&state.pointee)
    }

    /// Runs `body` with the lock held but interrupts left as they are (the kernel's
    /// `spin_lock_bh` in spirit): for state shared only by DPCs and ordinary threads, never by
    /// an ISR. If an ISR ever takes a lock of this class, the verifier reports it
    /// (``DriverVerifier/Rule/irqUnsafeLock``): the ISR could interrupt this holder and spin
    /// forever. Do not sleep or wait while holding it.
    @inlinable
    public func withLockInterruptsEnabled<Result>(function: StaticString = #function,
                                                  _ body: (inout State) throws -> Result) rethrows -> Result {
        acquireKeepingInterrupts(function)
        defer { releaseKeepingInterrupts(function) }
        return try body(&state.pointee)
    }

    @usableFromInline
    func acquire(_ function: StaticString) {
        runtime.disableInterrupts()
        verifier?.willAcquire(identity, at: function, interruptsEnabled: false, in: runtime)
        spin()
    }

    @usableFromInline
    func acquireKeepingInterrupts(_ function: StaticString) {
        if let verifier {
            verifier.willAcquire(identity, at: function, interruptsEnabled: !runtime.interruptsDisabledOnThisThread, in: runtime)
        }
        spin()
    }

    @usableFromInline
    func releaseKeepingInterrupts(_ function: StaticString) {
        word.store(false, ordering: .releasing)
        verifier?.didRelease(identity, at: function, in: runtime)
    }

    /// Spins for the lock word. A kernel's holder cannot be preempted on its CPU; a thread here
    /// can, and a waiter at a higher real-time priority on the same CPU (an interrupt thread
    /// spinning for a lock a DPC thread holds) would keep it from ever running: `sched_yield`
    /// yields only to threads of the waiter's own priority. So after a short spin the waiter
    /// yields, and after a longer one it sleeps briefly, which lets a preempted holder of any
    /// priority run and release the lock.
    private func spin() {
        var spins = 0
        while !word.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged {
            repeat {
                spins += 1
                if spins & 1023 != 0 {
                    modeless_cpu_relax()
                } else if spins < 16 * 1024 {
                    sched_yield()
                } else {
                    var pause = timespec(tv_sec: 0, tv_nsec: 50_000)
                    nanosleep(&pause, nil)
                }
            } while word.load(ordering: .relaxed)
        }
    }

    @usableFromInline
    func release(_ function: StaticString) {
        word.store(false, ordering: .releasing)
        verifier?.didRelease(identity, at: function, in: runtime)
        runtime.enableInterrupts()
    }
}

/// A lock for passive level only (the kernel's mutex): the holder may sleep, wait for the
/// device or call into the system. Never take it in an ISR or a DPC, or with interrupts
/// disabled or a ``SpinLock`` held: the verifier reports it.
///
/// Make it with ``DriverRuntime/makePassiveLock(_:_:)``.
public final class PassiveLock<State>: @unchecked Sendable {
    /// The lock's class name, for the verifier's reports.
    public let name: String
    @usableFromInline let runtime: any DriverRuntime
    /// The runtime's verifier, read once: asking the runtime each time would retain it.
    @usableFromInline let verifier: DriverVerifier?
    @usableFromInline let identity: LockIdentity
    @usableFromInline let mutex: Mutex<Void> = Mutex(())
    /// The guarded state, behind a pointer (see ``SpinLock``).
    @usableFromInline let state: UnsafeMutablePointer<State>

    init(name: String, state: State, runtime: any DriverRuntime) {
        self.name = name
        self.state = .allocate(capacity: 1)
        self.state.initialize(to: state)
        self.runtime = runtime
        verifier = runtime.verifier
        identity = LockIdentity(name: name, kind: .passive)
    }

    deinit {
        state.deinitialize(count: 1)
        state.deallocate()
    }

    /// Runs `body` with the lock held, on the guarded state; may sleep until the lock is free.
    @inlinable
    public func withLock<Result>(function: StaticString = #function,
                                 _ body: (inout State) throws -> Result) rethrows -> Result {
        checkAcquire(function)
        defer { checkRelease(function) }
        return try mutex.withLock { _ in try body(&state.pointee) }
    }

    @usableFromInline
    func checkAcquire(_ function: StaticString) {
        guard let verifier else { return }
        verifier.willSleep(.passiveLock(name), at: function, in: runtime)
        verifier.willAcquire(identity, at: function, interruptsEnabled: !runtime.interruptsDisabledOnThisThread, in: runtime)
    }

    @usableFromInline
    func checkRelease(_ function: StaticString) {
        verifier?.didRelease(identity, at: function, in: runtime)
    }
}

/// What identifies a lock's class to the verifier: its name and kind. Locks made with the
/// same name are one class, as lockdep keys classes by where a lock was initialised.
public struct LockIdentity: Sendable, Hashable, CustomStringConvertible {
    /// Spin locks disable interrupts; passive locks may sleep.
    public enum Kind: String, Sendable, Hashable { case spin, passive }
    /// The lock's class name, as reports name it.
    public let name: String
    /// Whether it is a spin or a passive lock.
    public let kind: Kind

    /// The identity of a lock named `name` of `kind`.
    public init(name: String, kind: Kind) {
        self.name = name
        self.kind = kind
    }

    /// `spin lock "name"` or `passive lock "name"`.
    public var description: String { "\(kind) lock \"\(name)\"" }
}

extension DriverRuntime {
    /// An interrupt-safe spin lock guarding `state`, for data shared with ISRs and DPCs.
    public func makeSpinLock<State>(_ name: String, _ state: State) -> SpinLock<State> {
        SpinLock(name: name, state: state, runtime: self)
    }

    /// A passive-level lock guarding `state`, for data only ordinary threads touch.
    public func makePassiveLock<State>(_ name: String, _ state: State) -> PassiveLock<State> {
        PassiveLock(name: name, state: state, runtime: self)
    }

    /// An event that ISRs and DPCs signal and ordinary threads wait for.
    public func makeWaitEvent(_ name: String) -> WaitEvent {
        WaitEvent(name: name, runtime: self)
    }

    /// Declares that the caller is about to wait for `what` (a synchronous device command, a
    /// blocking system call): refused with an error, and reported to the verifier, at
    /// interrupt level, where the wait would stall the interrupt or DPC that ends it.
    public func mightSleep(_ what: @autoclosure () -> String, function: StaticString = #function) throws(RuntimeError) {
        verifier?.willSleep(.call(what()), at: function, in: self)
        if isAtInterruptLevel {
            throw RuntimeError("\(what()) waits, which an ISR or DPC must not do (it would stall the interrupt or DPC that ends the wait): call it from an ordinary thread")
        }
    }
}
