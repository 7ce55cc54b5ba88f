import ModelessDevice
import ModelessModels
import ModelessRuntime
import ModelessSystem
import Synchronization
import Testing

/// The seed's guarantees under load: a million interrupts while other threads disable and
/// enable interrupts at random.
@Suite("Interrupt properties", .serialized)
struct InterruptPropertyTests {
    final class Shared: @unchecked Sendable {
        let isrInside = Atomic<Int>(0)
        let disablersInside = Atomic<Int>(0)
        let overlaps = Atomic<Int>(0)
        let dpcWrongCPU = Atomic<Int>(0)
        let dpcRuns = Atomic<Int>(0)
        /// One count per CPU of the DPC queuings made there that no run has matched yet. The ISR
        /// adds its token before queuing (so the run it causes always finds it) and takes it back
        /// if the DPC was queued already; a run takes one token from the CPU it runs on and counts
        /// a wrong CPU when there is none. Tokens are per CPU, not per ISR, so one ISR overwriting
        /// another's record cannot make a correct run look wrong.
        let unmatchedQueuings: [Counter] = (0..<SystemThread.cpuCount).map { _ in Counter() }
        final class Counter: Sendable { let count = Atomic<Int>(0) }

        func recordQueuing(_ queue: () -> Bool) {
            let before = SystemThread.currentCPU
            unmatchedQueuings[before].count.wrappingAdd(1, ordering: .sequentiallyConsistent)
            let queued = queue()
            let after = SystemThread.currentCPU
            if !queued {
                unmatchedQueuings[before].count.wrappingSubtract(1, ordering: .sequentiallyConsistent)
            } else if after != before {
                // Moved while queuing: the DPC went to one of the two CPUs; either may run it.
                unmatchedQueuings[after].count.wrappingAdd(1, ordering: .sequentiallyConsistent)
            }
        }

        func recordRun() {
            let tokens = unmatchedQueuings[SystemThread.currentCPU]
            if tokens.count.wrappingSubtract(1, ordering: .sequentiallyConsistent).newValue < 0 {
                tokens.count.wrappingAdd(1, ordering: .sequentiallyConsistent)
                dpcWrongCPU.wrappingAdd(1, ordering: .relaxed)
            }
        }
    }

    @Test(arguments: ExecutionMode.allCases)
    func aMillionInterruptsNeverOverlapDisabledSectionsAndNoneIsLost(_ mode: ExecutionMode) throws {
        let total = 1_000_000
        try withInterruptSource(mode) { runtime, vector, verifier in
            let shared = Shared()
            let dpc = runtime.makeDPC("check CPU") {
                shared.dpcRuns.wrappingAdd(1, ordering: .relaxed)
                shared.recordRun()
            }
            let attachment = try runtime.attachInterrupt(vector, name: "software", acknowledge: { 0 }) { _ in
                shared.isrInside.store(1, ordering: .sequentiallyConsistent)
                if shared.disablersInside.load(ordering: .sequentiallyConsistent) != 0 {
                    shared.overlaps.wrappingAdd(1, ordering: .relaxed)
                }
                shared.recordQueuing { dpc.queue() }
                shared.isrInside.store(0, ordering: .sequentiallyConsistent)
            }

            let stop = Atomic<Bool>(false)
            let disablers = try (0..<2).map { index in
                // Pinned, so that an ISR the kernel emulation runs on this thread (an interrupt
                // latched while masked fires when it unmasks) records the CPU it queues on.
                try SystemThread(name: "disabler\(index)", placement: .init(cpu: index % SystemThread.cpuCount)) {
                    var generator = SystemRandomNumberGenerator()
                    while !stop.load(ordering: .relaxed) {
                        runtime.withInterruptsDisabled {
                            runtime.withInterruptsDisabled {  // Nested: only the outermost acts.
                                shared.disablersInside.wrappingAdd(1, ordering: .sequentiallyConsistent)
                                if shared.isrInside.load(ordering: .sequentiallyConsistent) != 0 {
                                    shared.overlaps.wrappingAdd(1, ordering: .relaxed)
                                }
                                for _ in 0..<Int.random(in: 0..<200, using: &generator) { _ = shared.dpcRuns.load(ordering: .relaxed) }
                                shared.disablersInside.wrappingSubtract(1, ordering: .sequentiallyConsistent)
                            }
                        }
                        if Bool.random(using: &generator) { sched_yield() }
                    }
                }
            }
            for _ in 0..<total { try vector.trigger() }
            let deadline = monotonicNanoseconds() + 60_000_000_000
            while attachment.interrupts < total && monotonicNanoseconds() < deadline { usleep(1000) }
            stop.store(true, ordering: .relaxed)
            disablers.forEach { $0.join() }

            #expect(attachment.interrupts == total, "every raised interrupt is counted, coalesced or not")
            #expect(attachment.isrCalls <= total)
            #expect(shared.overlaps.load(ordering: .relaxed) == 0, "the ISR never ran while interrupts were disabled")
            #expect(shared.dpcRuns.load(ordering: .relaxed) >= 1)
            if runtime.refusals.isEmpty {
                #expect(shared.dpcWrongCPU.load(ordering: .relaxed) == 0, "DPCs run on the CPU that queued them")
            }
            #expect(verifier.reports.isEmpty, "\(verifier.reports)")
        }
    }

    @Test(arguments: ExecutionMode.allCases)
    func nestedDisablesHoldInterruptsUntilTheOutermostEnable(_ mode: ExecutionMode) throws {
        try withInterruptSource(mode) { runtime, vector, verifier in
            let calls = Atomic<Int>(0)
            _ = try runtime.attachInterrupt(vector, name: "software", acknowledge: { 0 }) { _ in
                calls.wrappingAdd(1, ordering: .relaxed)
            }
            runtime.disableInterrupts()
            runtime.disableInterrupts()
            try vector.trigger()
            usleep(50_000)
            runtime.enableInterrupts()
            usleep(50_000)
            #expect(calls.load(ordering: .relaxed) == 0, "still disabled after the inner enable")
            runtime.enableInterrupts()
            for _ in 0..<2000 where calls.load(ordering: .relaxed) == 0 { usleep(5000) }
            #expect(calls.load(ordering: .relaxed) == 1)
            #expect(verifier.reports.isEmpty, "\(verifier.reports)")
        }
    }

    /// A DPC an ISR queues runs once the ISR has returned, never during it: not even on a DPC
    /// thread that was busy when the ISR queued it and looks at its queue again while the ISR
    /// still runs, and also when the interrupt arrived while interrupts were disabled and fires
    /// as they are enabled again (in the kernel emulation, on the enabling thread).
    @Test(arguments: ExecutionMode.allCases)
    func aDPCQueuedByAnISRRunsOnlyAfterItReturns(_ mode: ExecutionMode) throws {
        // Ordinary scheduling: busy DPC threads under SCHED_FIFO would keep this thread from
        // raising the interrupt, and an interrupt thread above them would hide the race.
        let options = RuntimeOptions(interruptPriority: nil, dpcPriority: nil)
        try withInterruptSource(mode, options: options) { runtime, vector, verifier in
            let isrQueued = Atomic<Bool>(false)
            let isrReturned = Atomic<Bool>(false)
            let seenByDPC = Mutex<[Bool]>([])
            let dpc = runtime.makeDPC("after the ISR") { seenByDPC.withLock { $0.append(isrReturned.load(ordering: .acquiring)) } }
            // One busy DPC per CPU, returning once the ISR has queued its DPC: each CPU's DPC
            // thread then looks at its queue while the ISR is still running.
            let busy = (0..<SystemThread.cpuCount).map { cpu in
                runtime.makeDPC("busy on CPU \(cpu)") {
                    let until = monotonicNanoseconds() + 500_000_000
                    while !isrQueued.load(ordering: .acquiring) && monotonicNanoseconds() < until {}
                }
            }
            func keepTheDPCThreadsBusy() throws {
                isrQueued.store(false, ordering: .releasing)
                for cpu in busy.indices {
                    try SystemThread(name: "queue busy \(cpu)", placement: .init(cpu: cpu)) { busy[cpu].queue() }.join()
                }
            }
            _ = try runtime.attachInterrupt(vector, name: "queues a DPC", acknowledge: { 0 }) { _ in
                isrReturned.store(false, ordering: .releasing)
                dpc.queue()
                isrQueued.store(true, ordering: .releasing)
                let until = monotonicNanoseconds() + 30_000_000  // Time for a DPC thread to take it.
                while monotonicNanoseconds() < until {}
                isrReturned.store(true, ordering: .releasing)
            }
            try keepTheDPCThreadsBusy()
            try vector.trigger()  // Delivered at once.
            for _ in 0..<2000 where seenByDPC.withLock({ $0.count }) < 1 { usleep(1000) }
            try keepTheDPCThreadsBusy()
            runtime.withInterruptsDisabled {
                try? vector.trigger()  // Held until the enable.
                usleep(50_000)
            }
            for _ in 0..<2000 where seenByDPC.withLock({ $0.count }) < 2 { usleep(1000) }
            #expect(seenByDPC.withLock { $0 } == [true, true], "for each run of the DPC, whether the ISR had returned")
            #expect(verifier.reports.isEmpty, "\(verifier.reports)")
        }
    }

    @Test(arguments: ExecutionMode.allCases)
    func aDPCQueuedTwiceBeforeItRunsRunsOnce(_ mode: ExecutionMode) throws {
        let verifier = DriverVerifier()
        let runtime = try makeRuntime(mode, options: RuntimeOptions(verifier: verifier))
        defer { runtime.shutdown() }
        let runs = Atomic<Int>(0)
        let gate = ConditionLock()
        let open = Atomic<Bool>(false)
        let blocker = runtime.makeDPC("blocker") { gate.withLock { while !open.load(ordering: .relaxed) { gate.wait() } } }
        let counted = runtime.makeDPC("counted") { runs.wrappingAdd(1, ordering: .relaxed) }
        // Queue from one pinned thread so both land on the same CPU queue, behind the blocker.
        let queuer = try SystemThread(name: "queuer", placement: .init(cpu: 0)) {
            blocker.queue()
            #expect(counted.queue())
            #expect(!counted.queue())
        }
        queuer.join()
        gate.withLock { open.store(true, ordering: .relaxed); gate.broadcast() }
        for _ in 0..<2000 where runs.load(ordering: .relaxed) == 0 { usleep(5000) }
        usleep(20_000)
        #expect(runs.load(ordering: .relaxed) == 1)
        #expect(verifier.reports.isEmpty, "\(verifier.reports)")
    }
}

#if canImport(Glibc)
import Glibc
#endif
