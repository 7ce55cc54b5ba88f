import ModelessSystem

/// Per-CPU DPC queues, each drained by its own thread pinned to that CPU and scheduled
/// above ordinary threads (`SCHED_FIFO`, below the interrupt threads), as the seed emulates
/// kernel DPCs in user mode. The kernel emulation uses the same engine for its per-CPU queues.
final class DPCEngine: @unchecked Sendable {
    final class CPUQueue: @unchecked Sendable {
        let cpu: Int
        let lock = ConditionLock()
        var pending: [DeferredProcedureCall] = []
        var stopping = false
        var thread: SystemThread?

        init(cpu: Int) {
            self.cpu = cpu
            pending.reserveCapacity(64)
        }
    }

    let queues: [CPUQueue]
    let trace: InterruptTrace?
    private(set) var refusals: [String] = []
    private let registry = ConditionLock()
    private var nextIdentifier: Int32 = 0
    /// On an interrupt thread inside ``atInterruptLevel(_:)``: its queue's index plus one.
    private let interruptLevelQueue = ThreadLocalInteger()
    /// Above zero on a thread while it runs an ISR or a DPC.
    private let interruptLevel = ThreadLocalInteger()

    /// Whether the calling thread is running an ISR or a DPC.
    var isAtInterruptLevel: Bool { interruptLevel.current > 0 }

    /// Runs `body` marked as interrupt level: an ISR (inside ``atInterruptLevel(_:)``, or one
    /// the kernel emulation delivers on an unmasking thread) or a DPC.
    func markingInterruptLevel(_ body: () -> Void) {
        _ = interruptLevel.add(1)
        body()
        _ = interruptLevel.add(-1)
    }

    init(cpus: Int, priority: Int32?, trace: InterruptTrace?) throws(SystemError) {
        self.trace = trace
        queues = (0..<cpus).map(CPUQueue.init)
        for queue in queues {
            let thread = try SystemThread(name: "dpc/\(queue.cpu)", placement: .init(cpu: queue.cpu, realtimePriority: priority)) {
                [unowned self] in self.drain(queue)
            }
            queue.thread = thread
            refusals += thread.outcome.refusals.map { "DPC thread \(queue.cpu): \($0)" }
        }
    }

    func make(_ name: String, _ body: @escaping @Sendable () -> Void) -> DeferredProcedureCall {
        let identifier = registry.withLock {
            defer { nextIdentifier += 1 }
            return nextIdentifier
        }
        return DeferredProcedureCall(name: name, identifier: identifier, engine: self, body: body)
    }

    /// Queues on the calling thread's CPU and wakes that CPU's DPC thread, unless the caller
    /// is an interrupt thread inside ``atInterruptLevel(_:)``: that thread runs its queue
    /// itself on the way out, so waking the DPC thread would only cost a context switch.
    func enqueue(_ dpc: DeferredProcedureCall) {
        let draining = interruptLevelQueue.current
        let queue = queues[draining > 0 ? draining - 1 : SystemThread.currentCPU % queues.count]
        queue.lock.withLock {
            queue.pending.append(dpc)
            if draining == 0 { queue.lock.signal() }
        }
    }

    /// Runs `isr` on an interrupt thread, then every DPC queued for the thread's CPU, on the
    /// same thread, as a kernel runs DPCs on the way out of an interrupt. DPCs the ISR queues
    /// go to this CPU's queue without waking its DPC thread.
    func atInterruptLevel(_ isr: () -> Void) {
        let index = SystemThread.currentCPU % queues.count
        markingInterruptLevel {
            interruptLevelQueue.set(index + 1)
            isr()
            interruptLevelQueue.set(0)
            runQueued(index)
        }
    }

    /// Runs every DPC queued for the queue at `index`, on the calling thread.
    private func runQueued(_ index: Int) {
        let queue = queues[index]
        while let dpc = queue.lock.withLock({ queue.pending.isEmpty ? nil : queue.pending.removeFirst() }) {
            run(dpc)
        }
    }

    private func run(_ dpc: DeferredProcedureCall) {
        dpc.isQueued.store(false, ordering: .releasing)  // It may queue itself again while it runs.
        trace?.record(.dpcStart, dpc.identifier)
        markingInterruptLevel(dpc.body)
        trace?.record(.dpcEnd, dpc.identifier)
    }

    private func drain(_ queue: CPUQueue) {
        while true {
            let next: DeferredProcedureCall? = queue.lock.withLock {
                while queue.pending.isEmpty && !queue.stopping { queue.lock.wait() }
                return queue.pending.isEmpty ? nil : queue.pending.removeFirst()
            }
            guard let next else { return }
            run(next)
        }
    }

    func shutdown() {
        for queue in queues {
            queue.lock.withLock {
                queue.stopping = true
                queue.lock.broadcast()
            }
        }
        for queue in queues { queue.thread?.join() }
    }
}
