import ModelessDevice
import ModelessSystem
import Synchronization

/// User mode, as the seed describes it: the kernel acknowledges the interrupt and signals an
/// eventfd; the generic ISR runs the driver's acknowledge routine and saves the device state;
/// DPC A wakes the wait thread; the wait thread takes the interrupt lock's write side, calls
/// the real ISR with the saved state, releases the lock, unmasks INTx, and runs the DPCs
/// queued for its CPU. Disabling interrupts takes the read side.
///
/// Fused stages: the generic ISR, DPC A and the wait thread run on one thread, pinned to its
/// CPU at interrupt priority. The seed's order (acknowledge, save, wake, lock, ISR, unlock,
/// DPCs) and its exclusion (the real ISR only under the write lock; DPCs after it) are kept;
/// only the two thread hops between them are gone, which is what lets the pipeline's latency
/// stay near a bare eventfd wake-up. The trace still records every stage.
final class UserModeRuntime: DriverRuntime, @unchecked Sendable {
    let mode = ExecutionMode.user
    let trace: InterruptTrace?
    var refusals: [String] { engine.refusals + lines.refusals }
    private let lock = InterruptLock()
    private let depth = ThreadLocalInteger()
    private let engine: DPCEngine
    private let lines: InterruptLines

    private let options: RuntimeOptions

    init(options: RuntimeOptions) throws(RuntimeError) {
        self.options = options
        trace = options.trace
        engine = try DPCEngine.start(options)
        lines = InterruptLines(options: options)
    }

    func attachInterrupt(_ vector: InterruptVector, name: String,
                         acknowledge: @escaping @Sendable () -> UInt64,
                         isr: @escaping @Sendable (UInt64) -> Void) throws(RuntimeError) -> InterruptAttachment {
        try lines.attach(vector, name: name, role: "wait", acknowledge: acknowledge, isr: isr) { [unowned self] attachment in
            self.waitThread(attachment)
        }
    }

    private func waitThread(_ attachment: InterruptAttachment) {
        let id = attachment.identifier
        while let count = attachment.nextInterrupts() {
            trace?.record(.notified, id)
            let state = attachment.acknowledge()       // Generic ISR: acknowledge, save the state.
            trace?.record(.genericISR, id)
            trace?.record(.dpcA, id)                   // DPC A wakes the wait thread (fused).
            trace?.record(.waitThreadWoken, id)
            engine.atInterruptLevel {                   // Then the DPCs the ISR queued, here.
                lock.writeLock()
                trace?.record(.lockTaken, id)
                trace?.record(.realISREnter, id)
                depth.set(1)                            // The ISR runs with interrupts disabled.
                attachment.isr(state)
                depth.set(0)
                trace?.record(.realISRExit, id)
                lock.writeUnlock()
                trace?.record(.lockReleased, id)
                attachment.counted(count)
                try? attachment.vector.acknowledge()    // Re-enable INTx (nothing for MSI).
            }
        }
    }

    func detachInterrupt(_ attachment: InterruptAttachment) {
        lines.detach(attachment)
    }

    func makeDPC(_ name: String, _ body: @escaping @Sendable () -> Void) -> DeferredProcedureCall {
        engine.make(name, body)
    }

    var isAtInterruptLevel: Bool { engine.isAtInterruptLevel }
    var interruptsDisabledOnThisThread: Bool { depth.current > 0 }
    var verifier: DriverVerifier? { options.verifier }

    func disableInterrupts() {
        guard depth.add(1) == 1 else { return }
        lock.readLock()
        trace?.record(.interruptsDisabled, -1)
    }

    func enableInterrupts() {
        guard depth.add(-1) == 0 else { return }
        trace?.record(.interruptsEnabled, -1)
        lock.readUnlock()
    }

    func shutdown() {
        lines.detachAll()
        engine.shutdown()
    }
}
