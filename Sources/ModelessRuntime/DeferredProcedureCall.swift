import Synchronization

/// A deferred procedure call: work an ISR (or any code) queues to run soon, on the CPU that
/// queued it, above ordinary threads and below ISRs.
///
/// Queuing a DPC that is already queued does nothing (it runs once), as in the kernels the
/// seed describes. Make DPCs once, at start-up, and queue them from hot paths: queuing does
/// not allocate. When its owner is torn down, ``retire()`` it: queuing it afterwards (or after
/// the runtime's ``DriverRuntime/shutdown()``) is refused and reported by the verifier.
public final class DeferredProcedureCall: @unchecked Sendable {
    /// The name given at ``DriverRuntime/makeDPC(_:_:)``, for traces and verifier reports.
    public let name: String
    /// Its slot in the engine's table.
    let identifier: Int32
    let body: @Sendable () -> Void
    let isQueued = Atomic<Bool>(false)
    /// Bit 0: retired; the rest: how many threads are running it (two times the count).
    private let lifecycle = Atomic<Int>(0)
    let engine: DPCEngine

    init(name: String, identifier: Int32, engine: DPCEngine, body: @escaping @Sendable () -> Void) {
        self.name = name
        self.identifier = identifier
        self.engine = engine
        self.body = body
    }

    /// Queues the DPC on the calling thread's CPU. Returns false if it was already queued, or
    /// if it was retired or its runtime shut down (which the verifier reports).
    @discardableResult
    public func queue() -> Bool {
        if lifecycle.load(ordering: .acquiring) & 1 != 0 || engine.isShutDown.load(ordering: .acquiring) {
            refuse()
            return false
        }
        guard isQueued.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else {
            return false
        }
        engine.enqueue(self)
        return true
    }

    /// Whether ``retire()`` was called.
    public var isRetired: Bool { lifecycle.load(ordering: .acquiring) & 1 != 0 }

    /// Tears the DPC down with its owner: from now on queuing it is refused (and reported by
    /// the verifier), a run already queued is dropped, and a run in progress on another thread
    /// is waited for. Call it from an ordinary thread (or from the DPC itself), after stopping
    /// whatever queues it (detach the interrupt first).
    public func retire() {
        lifecycle.bitwiseOr(1, ordering: .acquiringAndReleasing)
        let runningHere = engine.context.isRunning(self)
        while lifecycle.load(ordering: .acquiring) >> 1 > (runningHere ? 1 : 0) { sched_yield() }
    }

    /// Marks a run as started; false if the DPC was retired.
    func begin() -> Bool {
        let before = lifecycle.wrappingAdd(2, ordering: .acquiringAndReleasing).oldValue
        if before & 1 != 0 {
            end()
            return false
        }
        return true
    }

    func end() { lifecycle.wrappingSubtract(2, ordering: .releasing) }

    private func refuse() {
        guard let verifier = engine.verifier else { return }
        let why = isRetired ? "it was retired" : "its runtime shut down"
        verifier.queuedAfterTeardown(name, why: why, context: engine.context.current)
    }
}

#if canImport(Glibc)
import Glibc
#endif
