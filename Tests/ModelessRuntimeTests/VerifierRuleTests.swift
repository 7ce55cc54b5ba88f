import ModelessDevice
import ModelessModels
import ModelessRuntime
import ModelessSystem
import Synchronization
import Testing

/// One deliberately wrong driver per rule of the ``DriverVerifier``: each must make the
/// verifier report exactly its rule, naming the locks, sites and context involved; a correct
/// driver doing the same things rightly must make no report.
@Suite("Verifier rules")
struct VerifierRuleTests {
    // MARK: Sleeping at interrupt level

    @Test(arguments: ExecutionMode.allCases)
    func waitingForAnEventInAnISRIsReported(_ mode: ExecutionMode) throws {
        let bench = try WrongDriverBench(mode)
        defer { bench.close() }
        let done = bench.runtime.makeWaitEvent("done")
        try bench.attach("sleeper") {
            func serviceSleeper() { _ = done.wait(timeout: .zero) { false } }
            serviceSleeper()
        }
        try bench.interrupt()
        #expect(bench.rules() == [.sleepAtInterruptLevel])
        let report = try #require(bench.verifier.reports.first)
        #expect(report.context == "ISR \"sleeper\"")
        #expect(report.sites == ["serviceSleeper()"])
        #expect(report.detail.contains("waiting for event \"done\""))
    }

    // MARK: irq-unsafe lock use

    @Test(arguments: ExecutionMode.allCases)
    func aSpinLockTakenInTheISRAndWithInterruptsEnabledInADPCIsIRQUnsafe(_ mode: ExecutionMode) throws {
        let bench = try WrongDriverBench(mode)
        defer { bench.close() }
        let counter = bench.runtime.makeSpinLock("counter", 0)
        let ran = Atomic<Int>(0)
        let dpc = bench.runtime.makeDPC("tally") {
            func tallyInDPC() { counter.withLockInterruptsEnabled { $0 += 1 } }  // Wrong: the ISR takes it too.
            tallyInDPC()
            ran.wrappingAdd(1, ordering: .releasing)
        }
        try bench.attach("counting") {
            func countInISR() { counter.withLock { $0 += 1 } }
            countInISR()
        }
        dpc.queue()
        #expect(waitUntil { ran.load(ordering: .acquiring) == 1 })
        try bench.interrupt()  // The two uses never collide; the rule fires anyway.
        #expect(bench.rules() == [.irqUnsafeLock])
        let report = try #require(bench.verifier.reports.first)
        #expect(report.locks == ["counter"])
        #expect(report.sites == ["tallyInDPC()", "countInISR()"])
        #expect(report.context == "ISR \"counting\"")
        #expect(report.detail.contains("DPC \"tally\""))
    }

    @Test(arguments: ExecutionMode.allCases)
    func aPassiveLockTakenInTheISRCountsAsAnIRQUse(_ mode: ExecutionMode) throws {
        let bench = try WrongDriverBench(mode)
        defer { bench.close() }
        let table = bench.runtime.makePassiveLock("table", 0)
        func submit() { table.withLock { $0 += 1 } }
        submit()
        try bench.attach("completion") {
            func complete() { table.withLock { $0 -= 1 } }
            complete()
        }
        try bench.interrupt()
        #expect(bench.rules() == [.sleepAtInterruptLevel, .irqUnsafeLock])
        let report = try #require(bench.verifier.reports.first { $0.rule == .irqUnsafeLock })
        #expect(report.sites == ["submit()", "complete()"])
    }

    // MARK: Lock order

    @Test(arguments: ExecutionMode.allCases)
    func locksTakenInBothOrdersAreAnInversionEvenWithoutADeadlock(_ mode: ExecutionMode) throws {
        let bench = try WrongDriverBench(mode)
        defer { bench.close() }
        let queue = bench.runtime.makePassiveLock("queue", 0)
        let namespace = bench.runtime.makePassiveLock("namespace", 0)
        func submitToQueue() { queue.withLock { _ in namespace.withLock { $0 += 1 } } }
        func resizeNamespace() { namespace.withLock { _ in queue.withLock { $0 += 1 } } }
        submitToQueue()
        resizeNamespace()
        #expect(bench.rules() == [.lockOrderInversion])
        let report = try #require(bench.verifier.reports.first)
        #expect(report.locks == ["namespace", "queue"])
        #expect(report.sites == ["resizeNamespace()", "submitToQueue()"])
        #expect(report.context == "passive level")
    }

    @Test(arguments: ExecutionMode.allCases)
    func aThreeLockCycleIsAnInversion(_ mode: ExecutionMode) throws {
        let bench = try WrongDriverBench(mode)
        defer { bench.close() }
        let a = bench.runtime.makeSpinLock("a", 0), b = bench.runtime.makeSpinLock("b", 0), c = bench.runtime.makeSpinLock("c", 0)
        func aThenB() { a.withLock { _ in b.withLock { $0 += 1 } } }
        func bThenC() { b.withLock { _ in c.withLock { $0 += 1 } } }
        func cThenA() { c.withLock { _ in a.withLock { $0 += 1 } } }
        aThenB()
        bThenC()
        #expect(bench.verifier.reports.isEmpty)
        cThenA()
        #expect(bench.rules() == [.lockOrderInversion])
        #expect(bench.verifier.reports.first?.locks == ["c", "b", "a"])
    }

    // MARK: Left disabled or held on return

    @Test(arguments: ExecutionMode.allCases)
    func anISRReturningWithInterruptsDisabledIsReported(_ mode: ExecutionMode) throws {
        let bench = try WrongDriverBench(mode)
        defer { bench.close() }
        let runtime = bench.runtime
        try bench.attach("forgetful") { runtime.disableInterrupts() }
        try bench.interrupt()
        #expect(bench.rules() == [.leakedOnReturn])
        #expect(bench.verifier.reports.first?.context == "ISR \"forgetful\"")
        try bench.interrupt()  // The runtime undid the leak: interrupts are still delivered.
    }

    @Test(arguments: ExecutionMode.allCases)
    func aDPCReturningWithInterruptsDisabledIsReported(_ mode: ExecutionMode) throws {
        let bench = try WrongDriverBench(mode)
        defer { bench.close() }
        let runtime = bench.runtime
        let dpc = runtime.makeDPC("forgetful") { runtime.disableInterrupts() }
        try bench.attach("queuer") { dpc.queue() }
        try bench.interrupt()
        bench.waitForReports()
        #expect(bench.rules() == [.leakedOnReturn])
        #expect(bench.verifier.reports.first?.context == "DPC \"forgetful\"")
        #expect(bench.verifier.reports.first?.detail.contains("1 disable not undone") == true)
        try bench.interrupt()  // Undone: the ISR still runs.
    }

    @Test(arguments: ExecutionMode.allCases)
    func anEntryPointReturningWithInterruptsDisabledIsReported(_ mode: ExecutionMode) throws {
        let bench = try WrongDriverBench(mode)
        defer { bench.close() }
        let runtime = bench.runtime
        func start() { runtime.entryPoint("start") { runtime.disableInterrupts() } }
        start()
        #expect(bench.rules() == [.leakedOnReturn])
        let report = try #require(bench.verifier.reports.first)
        #expect(report.sites == ["start()"])
        #expect(report.detail.hasPrefix("entry point \"start\" returned with interrupts disabled"))
        #expect(!runtime.interruptsDisabledOnThisThread)
    }

    // MARK: Unbalanced enable

    @Test(arguments: ExecutionMode.allCases)
    func enablingInterruptsThatWereNotDisabledIsReportedNotACrash(_ mode: ExecutionMode) throws {
        let bench = try WrongDriverBench(mode)
        defer { bench.close() }
        bench.runtime.enableInterrupts()
        #expect(bench.rules() == [.unbalancedEnable])
        #expect(bench.verifier.reports.first?.context == "passive level")
        bench.runtime.withInterruptsDisabled { #expect(bench.runtime.interruptsDisabledOnThisThread) }
        #expect(!bench.runtime.interruptsDisabledOnThisThread)
    }

    @Test(arguments: ExecutionMode.allCases)
    func anISREnablingInterruptsIsReported(_ mode: ExecutionMode) throws {
        let bench = try WrongDriverBench(mode)
        defer { bench.close() }
        let runtime = bench.runtime
        try bench.attach("eager") { runtime.enableInterrupts() }
        try bench.interrupt()
        #expect(bench.rules() == [.unbalancedEnable])
        #expect(bench.verifier.reports.first?.context == "ISR \"eager\"")
        try bench.interrupt()
    }

    // MARK: Access after release

    @Test(arguments: ExecutionMode.allCases)
    func aRegisterReadAfterTheDeviceClosedIsReported(_ mode: ExecutionMode) throws {
        let bench = try WrongDriverBench(mode)
        defer { bench.close() }
        bench.runtime.watch(bench.device)
        let registers = try #require(bench.device.regions[0])
        func readStatus() -> UInt32 { registers.load(Register<UInt32>(0x04)) }
        _ = readStatus()
        #expect(bench.verifier.reports.isEmpty)
        bench.device.close()
        #expect(readStatus() == .max)
        #expect(bench.rules() == [.accessAfterRelease])
        let report = try #require(bench.verifier.reports.first)
        #expect(report.sites == ["readStatus()"])
        #expect(report.detail.hasPrefix("BAR0 of"))
    }

    @Test(arguments: ExecutionMode.allCases)
    func aDMAWriteFromADPCAfterTheBufferWasFreedIsReported(_ mode: ExecutionMode) throws {
        let bench = try WrongDriverBench(mode)
        defer { bench.close() }
        let buffer = try bench.device.allocateDMA(size: 4096)
        bench.runtime.watch(buffer, name: "ring")
        let dpc = bench.runtime.makeDPC("refill") { try? buffer.store32(1, at: 0) }
        buffer.free()
        dpc.queue()
        bench.waitForReports()
        #expect(bench.rules() == [.accessAfterRelease])
        #expect(bench.verifier.reports.first?.context == "DPC \"refill\"")
        #expect(bench.verifier.reports.first?.detail.hasPrefix("DMA buffer \"ring\"") == true)
    }

    // MARK: DPC queued after teardown

    @Test(arguments: ExecutionMode.allCases)
    func aDPCQueuedAfterShutdownIsReportedAndDoesNotRun(_ mode: ExecutionMode) throws {
        let bench = try WrongDriverBench(mode)
        let ran = Atomic<Bool>(false)
        let dpc = bench.runtime.makeDPC("late") { ran.store(true, ordering: .relaxed) }
        bench.close()
        #expect(!dpc.queue())
        #expect(bench.rules() == [.dpcQueuedAfterTeardown])
        #expect(bench.verifier.reports.first?.detail.contains("its runtime shut down") == true)
        let didRun = ran.load(ordering: .relaxed)
        #expect(!didRun)
    }

    @Test(arguments: ExecutionMode.allCases)
    func anISRQueuingARetiredDPCIsReported(_ mode: ExecutionMode) throws {
        let bench = try WrongDriverBench(mode)
        defer { bench.close() }
        let runs = Atomic<Int>(0)
        let dpc = bench.runtime.makeDPC("completion") { runs.wrappingAdd(1, ordering: .relaxed) }
        try bench.attach("stale") { dpc.queue() }
        try bench.interrupt()
        #expect(waitUntil { runs.load(ordering: .relaxed) == 1 })
        dpc.retire()  // Wrong: the interrupt still queues it.
        try bench.interrupt()
        #expect(bench.rules() == [.dpcQueuedAfterTeardown])
        #expect(bench.verifier.reports.first?.context == "ISR \"stale\"")
        #expect(runs.load(ordering: .relaxed) == 1)
    }

    // MARK: A correct driver

    @Test(arguments: ExecutionMode.allCases)
    func aDriverThatKeepsTheRulesMakesNoReport(_ mode: ExecutionMode) throws {
        let bench = try WrongDriverBench(mode)
        let runtime = bench.runtime
        bench.runtime.watch(bench.device)
        let shared = runtime.makeSpinLock("shared", 0)
        let dpcOnly = runtime.makeSpinLock("dpc only", 0)
        let configuration = runtime.makePassiveLock("configuration", 0)
        let done = runtime.makeWaitEvent("done")
        let registers = try #require(bench.device.regions[0])
        let dpc = runtime.makeDPC("completion") {
            dpcOnly.withLockInterruptsEnabled { $0 += 1 }
            shared.withLock { $0 += 1 }
            done.signal()
        }
        try bench.attach("clean") {
            _ = registers.load(Register<UInt32>(0))
            shared.withLock { $0 += 1 }
            dpc.queue()
        }
        for round in 1...10 {
            try runtime.entryPoint("submit") {
                try configuration.withLock { _ in
                    shared.withLock { $0 += 1 }
                    dpcOnly.withLockInterruptsEnabled { $0 += 1 }
                    try bench.interrupt()
                }
                #expect(done.wait(timeout: .seconds(5)) { dpcOnly.withLockInterruptsEnabled { $0 } >= 2 * round })
            }
        }
        bench.close()
        dpc.retire()
        #expect(bench.verifier.reports.isEmpty, "\(bench.verifier.reports)")
    }
}
