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
/// stay near a bare eventfd wake-up. The trace records what runs: one fused stage
/// (``InterruptTrace/Stage/genericISRFused``) for the three, then the lock and the real ISR.
final class UserModeRuntime: CheckedRuntime, @unchecked Sendable {
    let mode = ExecutionMode.user
    let trace: InterruptTrace?
    var refusals: [String] { engine.refusals + lines.refusals }
    private let lock = InterruptLock()
    private let keys = ThreadLocalKeys()
    let depth: InterruptDepth
    private let engine: DPCEngine
    private let lines: InterruptLines

    private let options: RuntimeOptions

    init(options: RuntimeOptions) throws(RuntimeError) {
        self.options = options
        trace = options.trace
        depth = InterruptDepth(keys)
        engine = try DPCEngine.start(options, depth: depth, keys: keys)
        lines = InterruptLines(options: options)
        engine.owner = self
    }

    func attachInterrupt(_ vector: InterruptVector, name: String,
                         acknowledge: @escaping @Sendable () -> UInt64,
                         isr: @escaping @Sendable (UInt64) -> Void) throws(RuntimeError) -> InterruptAttachment {
        try lines.attach(vector, name: name, role: "wait", acknowledge: acknowledge, isr: isr) { [unowned self] attachment in
            self.serveInterrupts(attachment)
        }
    }

    /// The wait thread's loop. Never inlined: scripts/bench/retain-release counts inside it.
    @inline(never)
    private func serveInterrupts(_ attachment: InterruptAttachment) {
        let id = attachment.identifier
        while let count = attachment.nextInterrupts() {
            trace?.record(.notified, id)
            let context = engine.context.enter(attachment)
            let state = attachment.acknowledge()       // Generic ISR: acknowledge, save the state;
            trace?.record(.genericISRFused, id)        // DPC A and the wake-up are this same thread.
            let level = engine.enterInterruptLevel()
            lock.writeLock()
            trace?.record(.lockTaken, id)
            trace?.record(.realISREnter, id)
            runISR(attachment, state)
            trace?.record(.realISRExit, id)
            lock.writeUnlock()
            trace?.record(.lockReleased, id)
            attachment.counted(count)
            attachment.unmask()                         // Re-enable INTx (nothing for MSI).
            engine.context.restore(context)
            engine.leaveInterruptLevel(level)           // Then the DPCs the ISR queued, here.
        }
    }

    /// The real ISR, with interrupts disabled on this thread as the runtime's own disable.
    @inline(__always)
    private func runISR(_ attachment: InterruptAttachment, _ state: UInt64) {
        let saved = depth.enterISR()
        guard let verifier = options.verifier else {
            attachment.isr(state)
            _ = depth.leaveISR(saved)
            return
        }
        let held = verifier.heldCount
        attachment.isr(state)
        let leaked = depth.leaveISR(saved)
        verifier.checkReturn(of: "ISR \"\(attachment.name)\"", site: nil, heldBefore: held, leakedDisables: leaked,
                             context: .isr(attachment.name))
    }

    func detachInterrupt(_ attachment: InterruptAttachment) {
        lines.detach(attachment)
    }

    func makeDPC(_ name: String, _ body: @escaping @Sendable () -> Void) -> DeferredProcedureCall {
        engine.make(name, body)
    }

    var isAtInterruptLevel: Bool { engine.isAtInterruptLevel }
    var interruptsDisabledOnThisThread: Bool { depth.isDisabled }
    var verifier: DriverVerifier? { options.verifier }
    var currentContext: ExecutionContext { engine.context.current }

    func disableInterrupts() {
        guard depth.disable() else { return }
        lock.readLock()
        trace?.record(.interruptsDisabled, -1)
    }

    func enableInterrupts() {
        switch depth.enable() {
        case .nested: return
        case .outermost:
            trace?.record(.interruptsEnabled, -1)
            lock.readUnlock()
        case .unbalanced:
            refuseUnbalancedEnable(verifier, engine.context)
        }
    }

    func shutdown() {
        lines.detachAll()
        engine.shutdown()
    }
}
