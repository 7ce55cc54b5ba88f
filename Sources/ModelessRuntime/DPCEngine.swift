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

    /// Queues on the calling thread's CPU and wakes that CPU's DPC thread.
    func enqueue(_ dpc: DeferredProcedureCall) {
        let queue = queues[SystemThread.currentCPU % queues.count]
        queue.lock.withLock {
            queue.pending.append(dpc)
            queue.lock.signal()
        }
    }

    /// Runs every DPC queued for `cpu`, on the calling thread (the wait thread after an ISR).
    func runQueued(cpu: Int) {
        let queue = queues[cpu % queues.count]
        while let dpc = queue.lock.withLock({ queue.pending.isEmpty ? nil : queue.pending.removeFirst() }) {
            run(dpc)
        }
    }

    private func run(_ dpc: DeferredProcedureCall) {
        dpc.isQueued.store(false, ordering: .releasing)  // It may queue itself again while it runs.
        trace?.record(.dpcStart, dpc.identifier)
        dpc.body()
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
