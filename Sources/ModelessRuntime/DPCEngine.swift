import ModelessSystem
import Synchronization

/// Per-CPU DPC queues, each drained by its own thread pinned to that CPU and scheduled
/// above ordinary threads (`SCHED_FIFO`, below the interrupt threads), as the seed emulates
/// kernel DPCs in user mode. The kernel emulation uses the same engine for its per-CPU queues.
///
/// Nothing is allocated or reference-counted to queue or run a DPC: every DPC has a slot in a
/// table fixed at start-up, and each CPU's queue is a ring of slot numbers as large as the
/// table (a DPC is in at most one ring at a time, so a ring never overflows).
final class DPCEngine: @unchecked Sendable {
    /// How many DPCs one runtime can make.
    static let capacity = 1024

    final class CPUQueue: @unchecked Sendable {
        let cpu: Int
        let lock = ConditionLock()
        /// Slot numbers of queued DPCs, oldest at `head`; guarded by `lock`.
        private let ring = UnsafeMutablePointer<Int32>.allocate(capacity: DPCEngine.capacity)
        /// Head, count and the stopping flag, behind a pointer so that queuing and running
        /// make no exclusivity checks (class properties would each cost a `swift_beginAccess`).
        private let indices = UnsafeMutablePointer<Int>.allocate(capacity: 3)
        var thread: SystemThread?

        init(cpu: Int) {
            self.cpu = cpu
            indices.initialize(repeating: 0, count: 3)
        }

        deinit {
            ring.deallocate()
            indices.deallocate()
        }

        /// How many slots are queued; the lock must be held.
        var count: Int { indices[1] }

        /// Set when the DPC thread must end once the ring is empty; the lock must be held.
        var stopping: Bool {
            get { indices[2] != 0 }
            set { indices[2] = newValue ? 1 : 0 }
        }

        /// Appends a slot; the lock must be held.
        @inline(__always)
        func push(_ slot: Int32) {
            ring[(indices[0] + indices[1]) % DPCEngine.capacity] = slot
            indices[1] += 1
        }

        /// Takes the oldest slot; the lock must be held.
        @inline(__always)
        func pop() -> Int32? {
            guard indices[1] > 0 else { return nil }
            let slot = ring[indices[0]]
            indices[0] = (indices[0] + 1) % DPCEngine.capacity
            indices[1] -= 1
            return slot
        }
    }

    let queues: [CPUQueue]
    let trace: InterruptTrace?
    let verifier: DriverVerifier?
    /// What each thread runs (passive, an ISR, a DPC), for the verifier's reports.
    let context = ContextWord()
    /// The runtime's interrupt-disable depth, checked when a DPC returns under the verifier.
    let depth: InterruptDepth
    /// The runtime, to undo what a DPC leaked (only under the verifier).
    weak var owner: (any DriverRuntime)?
    private(set) var refusals: [String] = []
    private let registry = ConditionLock()
    /// Every DPC made, retained until shutdown, by slot number.
    private let table = UnsafeMutablePointer<Unmanaged<DeferredProcedureCall>>.allocate(capacity: DPCEngine.capacity)
    private var made = 0
    /// Set by ``shutdown()``: queuing is refused from then on.
    let isShutDown = Atomic<Bool>(false)
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

    init(cpus: Int, priority: Int32?, trace: InterruptTrace?, verifier: DriverVerifier?, depth: InterruptDepth) throws(SystemError) {
        self.trace = trace
        self.verifier = verifier
        self.depth = depth
        queues = (0..<cpus).map(CPUQueue.init)
        for queue in queues {
            let thread = try SystemThread(name: "dpc/\(queue.cpu)", placement: .init(cpu: queue.cpu, realtimePriority: priority)) {
                [unowned self] in self.drain(queue)
            }
            queue.thread = thread
            refusals += thread.outcome.refusals.map { "DPC thread \(queue.cpu): \($0)" }
        }
    }

    deinit { table.deallocate() }

    func make(_ name: String, _ body: @escaping @Sendable () -> Void) -> DeferredProcedureCall {
        registry.withLock {
            precondition(made < Self.capacity,
                         "a runtime makes at most \(Self.capacity) DPCs: make each DPC once, at start-up, and queue it as often as needed")
            let dpc = DeferredProcedureCall(name: name, identifier: Int32(made), engine: self, body: body)
            table[made] = .passRetained(dpc)
            made += 1
            return dpc
        }
    }

    /// Queues on the calling thread's CPU and wakes that CPU's DPC thread, unless the caller
    /// is an interrupt thread inside ``atInterruptLevel(_:)``: that thread runs its queue
    /// itself on the way out, so waking the DPC thread would only cost a context switch.
    func enqueue(_ dpc: DeferredProcedureCall) {
        let draining = interruptLevelQueue.current
        let queue = queues[draining > 0 ? draining - 1 : SystemThread.currentCPU % queues.count]
        queue.lock.lock()
        queue.push(dpc.identifier)
        if draining == 0 { queue.lock.signal() }
        queue.lock.unlock()
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
        while true {
            queue.lock.lock()
            let slot = queue.pop()
            queue.lock.unlock()
            guard let slot else { return }
            run(slot)
        }
    }

    private func run(_ slot: Int32) {
        table[Int(slot)]._withUnsafeGuaranteedRef { dpc in
            dpc.isQueued.store(false, ordering: .releasing)  // It may queue itself again while it runs.
            guard dpc.begin() else { return }  // Retired while it waited.
            trace?.record(.dpcStart, dpc.identifier)
            let saved = context.enter(dpc)
            if let verifier {
                runChecked(dpc, verifier)
            } else {
                markingInterruptLevel(dpc.body)
            }
            context.restore(saved)
            trace?.record(.dpcEnd, dpc.identifier)
            dpc.end()
        }
    }

    /// Runs `dpc` and reports the interrupt disables and locks it left behind, then undoes the
    /// disables so that the runtime keeps working.
    private func runChecked(_ dpc: DeferredProcedureCall, _ verifier: DriverVerifier) {
        let held = verifier.heldCount
        let disables = depth.count
        markingInterruptLevel(dpc.body)
        let leaked = depth.count - disables
        verifier.checkReturn(of: "DPC \"\(dpc.name)\"", site: nil, heldBefore: held, leakedDisables: max(0, leaked),
                             context: .dpc(dpc.name))
        if leaked > 0, let owner { for _ in 0..<leaked { owner.enableInterrupts() } }
    }

    private func drain(_ queue: CPUQueue) {
        while true {
            queue.lock.lock()
            while queue.count == 0 && !queue.stopping { queue.lock.wait() }
            let slot = queue.pop()
            queue.lock.unlock()
            guard let slot else { return }
            run(slot)
        }
    }

    /// Refuses queuing from now on, stops the DPC threads (each after its queue is empty) and
    /// releases the table.
    func shutdown() {
        guard !isShutDown.exchange(true, ordering: .acquiringAndReleasing) else { return }
        for queue in queues {
            queue.lock.withLock {
                queue.stopping = true
                queue.lock.broadcast()
            }
        }
        for queue in queues { queue.thread?.join() }
        registry.withLock {
            for slot in 0..<made { table[slot].release() }
            made = 0
        }
    }
}
