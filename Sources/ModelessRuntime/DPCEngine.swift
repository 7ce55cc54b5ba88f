#if canImport(Glibc)
import Glibc
#endif
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

    /// One CPU's queue: a ring of slot numbers under a pthread mutex, with a condition its DPC
    /// thread sleeps on. Raw pointers only, so that queuing and running retain nothing and make
    /// no exclusivity checks.
    struct CPUQueue: @unchecked Sendable {
        let cpu: Int
        private let mutex: UnsafeMutablePointer<pthread_mutex_t>
        private let condition: UnsafeMutablePointer<pthread_cond_t>
        private let ring: UnsafeMutablePointer<Int32>
        /// Head, count and the stopping flag.
        private let indices: UnsafeMutablePointer<Int>

        init(cpu: Int) {
            self.cpu = cpu
            mutex = .allocate(capacity: 1)
            pthread_mutex_init(mutex, nil)
            condition = .allocate(capacity: 1)
            pthread_cond_init(condition, nil)
            ring = .allocate(capacity: DPCEngine.capacity)
            indices = .allocate(capacity: 3)
            indices.initialize(repeating: 0, count: 3)
        }

        /// Frees the queue; its thread has ended.
        func destroy() {
            pthread_cond_destroy(condition)
            pthread_mutex_destroy(mutex)
            condition.deallocate()
            mutex.deallocate()
            ring.deallocate()
            indices.deallocate()
        }

        @inline(__always) func lock() { pthread_mutex_lock(mutex) }
        @inline(__always) func unlock() { pthread_mutex_unlock(mutex) }
        @inline(__always) func wait() { pthread_cond_wait(condition, mutex) }
        @inline(__always) func signal() { pthread_cond_signal(condition) }
        @inline(__always) func broadcast() { pthread_cond_broadcast(condition) }

        /// How many slots are queued; the lock must be held.
        var count: Int { indices[1] }

        /// Set when the DPC thread must end once the ring is empty; the lock must be held.
        var stopping: Bool {
            get { indices[2] != 0 }
            nonmutating set { indices[2] = newValue ? 1 : 0 }
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

    /// One queue per CPU, `queueCount` of them.
    private let queues: UnsafeMutablePointer<CPUQueue>
    private let queueCount: Int
    private var threads: [SystemThread] = []
    private let keys: ThreadLocalKeys
    let trace: InterruptTrace?
    let verifier: DriverVerifier?
    /// What each thread runs (passive, an ISR, a DPC), for the verifier's reports.
    let context: ContextWord
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
    /// 1 on a thread inside ``enterInterruptLevel()`` (running an ISR), whose DPCs it holds.
    private let holdingDPCs: ThreadLocalInteger
    /// The DPCs an ISR queued on this thread, held until it returns: the first and the last
    /// slot plus one (zero when none), linked through `nextHeld`.
    private let heldFirst: ThreadLocalInteger
    private let heldLast: ThreadLocalInteger
    /// For each slot held on some thread, the slot held after it (-1 for the last). A DPC is
    /// queued at most once at a time, so its entry belongs to the thread that holds it.
    private let nextHeld = UnsafeMutablePointer<Int32>.allocate(capacity: DPCEngine.capacity)
    /// Above zero on a thread while it runs an ISR or a DPC.
    private let interruptLevel: ThreadLocalInteger

    /// Whether the calling thread is running an ISR or a DPC.
    var isAtInterruptLevel: Bool { interruptLevel.current > 0 }

    /// Runs `body` marked as interrupt level: a DPC (an ISR is inside ``enterInterruptLevel()``).
    func markingInterruptLevel(_ body: () -> Void) {
        _ = interruptLevel.add(1)
        body()
        _ = interruptLevel.add(-1)
    }

    init(cpus: Int, priority: Int32?, trace: InterruptTrace?, verifier: DriverVerifier?, depth: InterruptDepth,
         keys: ThreadLocalKeys) throws(SystemError) {
        self.trace = trace
        self.verifier = verifier
        self.depth = depth
        self.keys = keys
        context = ContextWord(keys)
        holdingDPCs = keys.make()
        interruptLevel = keys.make()
        heldFirst = keys.make()
        heldLast = keys.make()
        nextHeld.initialize(repeating: -1, count: DPCEngine.capacity)
        queueCount = cpus
        queues = .allocate(capacity: cpus)
        for cpu in 0..<cpus { (queues + cpu).initialize(to: CPUQueue(cpu: cpu)) }
        do {
            for cpu in 0..<cpus {
                let queue = queues[cpu]
                let thread = try SystemThread(name: "dpc/\(cpu)", placement: .init(cpu: cpu, realtimePriority: priority)) {
                    [unowned self] in self.drain(queue)
                }
                threads.append(thread)
                refusals += thread.outcome.refusals.map { "DPC thread \(cpu): \($0)" }
            }
        } catch {
            stopThreads()
            throw error
        }
    }

    deinit {
        for cpu in 0..<queueCount { queues[cpu].destroy() }
        queues.deallocate()
        table.deallocate()
        nextHeld.deallocate()
    }

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
    /// is inside ``enterInterruptLevel()`` (an ISR): then the DPC is held on this thread until
    /// the ISR returns, where no DPC thread can take it, so it never runs while its ISR does.
    func enqueue(_ dpc: DeferredProcedureCall) {
        if holdingDPCs.current != 0 {
            let slot = dpc.identifier
            nextHeld[Int(slot)] = -1
            let last = heldLast.current
            if last == 0 { heldFirst.set(Int(slot) + 1) } else { nextHeld[last - 1] = slot }
            heldLast.set(Int(slot) + 1)
            return
        }
        let queue = queues[SystemThread.currentCPU % queueCount]
        queue.lock()
        queue.push(dpc.identifier)
        queue.signal()
        queue.unlock()
    }

    /// Enters interrupt level for an ISR: DPCs the ISR queues are held on this thread until
    /// ``leaveInterruptLevel(_:)`` or ``leaveInterruptLevelForDPCThread(_:)``, which take the
    /// index returned here (this CPU's queue). (A pair of calls rather than a closure, which
    /// would retain what it captures on every interrupt.)
    @inline(__always)
    func enterInterruptLevel() -> Int {
        let index = SystemThread.currentCPU % queueCount
        _ = interruptLevel.add(1)
        holdingDPCs.set(1)
        return index
    }

    /// Runs the DPCs the ISR queued, then every other DPC queued for the interrupt's CPU, on
    /// the same thread, as a kernel runs DPCs on the way out of an interrupt (an interrupt
    /// thread's way: a wait thread's or an interrupt line's), then leaves interrupt level.
    @inline(__always)
    func leaveInterruptLevel(_ index: Int) {
        holdingDPCs.set(0)
        var slot = takeHeld()
        while slot >= 0 {
            let next = nextHeld[Int(slot)]  // Read first: once run, the DPC may be queued again.
            run(slot)
            slot = next
        }
        runQueued(index)
        _ = interruptLevel.add(-1)
    }

    /// Hands the DPCs the ISR queued to the interrupt CPU's DPC thread and leaves interrupt
    /// level: for an ISR run on a thread that is not an interrupt thread (one that enabled
    /// interrupts again in the kernel emulation), which is not taken over to run them.
    func leaveInterruptLevelForDPCThread(_ index: Int) {
        holdingDPCs.set(0)
        var slot = takeHeld()
        if slot >= 0 {
            let queue = queues[index]
            queue.lock()
            while slot >= 0 {
                queue.push(slot)
                slot = nextHeld[Int(slot)]
            }
            queue.signal()
            queue.unlock()
        }
        _ = interruptLevel.add(-1)
    }

    /// The first DPC held on this thread (-1 for none), the list emptied.
    @inline(__always)
    private func takeHeld() -> Int32 {
        let first = heldFirst.current
        guard first > 0 else { return -1 }
        heldFirst.set(0)
        heldLast.set(0)
        return Int32(first - 1)
    }

    /// Runs every DPC queued for the queue at `index`, on the calling thread.
    private func runQueued(_ index: Int) {
        let queue = queues[index]
        while true {
            queue.lock()
            let slot = queue.pop()
            queue.unlock()
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
            queue.lock()
            while queue.count == 0 && !queue.stopping { queue.wait() }
            let slot = queue.pop()
            queue.unlock()
            guard let slot else { return }
            run(slot)
        }
    }

    /// Ends the DPC threads, each after its queue is empty.
    private func stopThreads() {
        for cpu in 0..<queueCount {
            let queue = queues[cpu]
            queue.lock()
            queue.stopping = true
            queue.broadcast()
            queue.unlock()
        }
        threads.forEach { $0.join() }
        threads.removeAll()
    }

    /// Refuses queuing from now on, stops the DPC threads (each after its queue is empty) and
    /// releases the table.
    func shutdown() {
        guard !isShutDown.exchange(true, ordering: .acquiringAndReleasing) else { return }
        stopThreads()
        registry.withLock {
            for slot in 0..<made { table[slot].release() }
            made = 0
        }
    }
}
