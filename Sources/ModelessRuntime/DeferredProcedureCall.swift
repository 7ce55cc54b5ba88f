import Synchronization

/// A deferred procedure call: work an ISR (or any code) queues to run soon, on the CPU that
/// queued it, above ordinary threads and below ISRs.
///
/// Queuing a DPC that is already queued does nothing (it runs once), as in the kernels the
/// seed describes. Make DPCs once, at start-up, and queue them from hot paths: queuing does
/// not allocate.
public final class DeferredProcedureCall: @unchecked Sendable {
    public let name: String
    let identifier: Int32
    let body: @Sendable () -> Void
    let isQueued = Atomic<Bool>(false)
    weak var engine: DPCEngine?

    init(name: String, identifier: Int32, engine: DPCEngine, body: @escaping @Sendable () -> Void) {
        self.name = name
        self.identifier = identifier
        self.engine = engine
        self.body = body
    }

    /// Queues the DPC on the calling thread's CPU. Returns false if it was already queued.
    @discardableResult
    public func queue() -> Bool {
        guard isQueued.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else {
            return false
        }
        engine?.enqueue(self)
        return true
    }
}
