import ModelessDevice
import ModelessSystem
import Synchronization

/// The in-tree kernel emulation: the same driver runs with kernel semantics.
///
/// Each attached vector is an interrupt line of an emulated interrupt controller. A line's
/// thread (the CPU's interrupt context, pinned, highest priority) receives the device's
/// notification and the controller calls the ISR directly at interrupt level: acknowledge,
/// then the real ISR, with no wait thread. Disabling interrupts masks the controller: a
/// masking thread waits for an ISR in progress to finish, and interrupts that arrive while
/// masked are latched and delivered when the last mask is lifted, on the unmasking thread,
/// as a pending interrupt fires when a CPU re-enables them. DPCs run from per-CPU queues, those
/// an ISR queues only once it has returned.
final class KernelEmulation: CheckedRuntime, @unchecked Sendable {
    let mode = ExecutionMode.kernelEmulation
    let trace: InterruptTrace?
    var refusals: [String] { engine.refusals + lines.refusals }
    private let engine: DPCEngine
    private let keys = ThreadLocalKeys()
    let depth: InterruptDepth
    private let controller = ConditionLock()
    /// Guarded by `controller`.
    private let state = ControllerState()
    private var maskDepth: Int {
        get { state.maskDepth }
        set { state.maskDepth = newValue }
    }
    private var inInterrupt: Bool {
        get { state.inInterrupt }
        set { state.inInterrupt = newValue }
    }
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
        guard lines.count < ControllerState.capacity else {
            throw RuntimeError("cannot attach \(name): the emulated interrupt controller has \(ControllerState.capacity) lines, all attached; detach one first")
        }
        return try lines.attach(vector, name: name, role: "irq", acknowledge: acknowledge, isr: isr) { [unowned self] attachment in
            self.serveInterruptLine(attachment)
        }
    }

    /// An interrupt line's thread. Never inlined: scripts/bench/retain-release counts inside it.
    @inline(never)
    private func serveInterruptLine(_ attachment: InterruptAttachment) {
        while let count = attachment.nextInterrupts() {
            trace?.record(.notified, attachment.identifier)
            let level = engine.enterInterruptLevel()
            raise(attachment, count)
            engine.leaveInterruptLevel(level)  // DPCs the ISR queued run here, on the way out.
        }
    }

    /// An interrupt line was raised: deliver now, or latch it while the controller is masked
    /// or another ISR is running.
    private func raise(_ attachment: InterruptAttachment, _ count: UInt64) {
        controller.lock()
        if maskDepth > 0 || inInterrupt {
            state.latch(attachment, count)
            controller.unlock()
            trace?.record(.latched, attachment.identifier)
            return
        }
        inInterrupt = true
        controller.unlock()
        deliver(attachment, count)
        deliverLatched()
    }

    /// Runs latched interrupts until none is left; the caller holds interrupt level (inInterrupt).
    /// Never inlined: scripts/bench/retain-release counts inside it (a thread that unmasks
    /// takes the interrupts latched meanwhile here).
    @inline(never)
    private func deliverLatched() {
        controller.lock()
        while maskDepth == 0, let (line, count) = state.takeLatched() {
            controller.unlock()
            line._withUnsafeGuaranteedRef { deliver($0, count) }
            controller.lock()
        }
        inInterrupt = false
        controller.broadcast()
        controller.unlock()
    }

    private func deliver(_ attachment: InterruptAttachment, _ count: UInt64) {
        let id = attachment.identifier
        trace?.record(.lockTaken, id)
        let context = engine.context.enter(attachment)
        let state = attachment.acknowledge()
        trace?.record(.genericISR, id)
        trace?.record(.realISREnter, id)
        let saved = depth.enterISR()  // The ISR runs with interrupts disabled.
        if let verifier = options.verifier {
            let held = verifier.heldCount
            attachment.isr(state)
            let leaked = depth.leaveISR(saved)
            verifier.checkReturn(of: "ISR \"\(attachment.name)\"", site: nil, heldBefore: held, leakedDisables: leaked,
                                 context: .isr(attachment.name))
        } else {
            attachment.isr(state)
            _ = depth.leaveISR(saved)
        }
        engine.context.restore(context)
        trace?.record(.realISRExit, id)
        attachment.counted(count)
        attachment.unmask()
        trace?.record(.lockReleased, id)
    }

    func detachInterrupt(_ attachment: InterruptAttachment) {
        lines.detach(attachment)
        controller.withLock { state.forget(attachment) }
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
        controller.withLock {
            while inInterrupt { controller.wait() }
            maskDepth += 1
        }
        trace?.record(.interruptsDisabled, -1)
    }

    func enableInterrupts() {
        switch depth.enable() {
        case .nested: return
        case .outermost: break
        case .unbalanced:
            refuseUnbalancedEnable(options.verifier, engine.context)
            return
        }
        trace?.record(.interruptsEnabled, -1)
        controller.lock()
        maskDepth -= 1
        if maskDepth == 0, !inInterrupt, state.hasLatched {
            inInterrupt = true
            controller.unlock()
            // This thread takes the pending interrupt. The DPCs its ISR queues go to this CPU's
            // DPC thread once it returns: an ordinary thread is not taken over to run them, and
            // a DPC that enabled interrupts is not interrupted by another.
            let level = engine.enterInterruptLevel()
            deliverLatched()
            engine.leaveInterruptLevelForDPCThread(level)
        } else {
            controller.unlock()
        }
    }

    func shutdown() {
        lines.detachAll()
        controller.withLock { while state.takeLatched() != nil {} }  // Their lines are detached.
        engine.shutdown()
    }
}
