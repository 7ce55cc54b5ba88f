import ModelessDevice
import ModelessModels
import ModelessRuntime
import ModelessSystem
import Synchronization
import Testing

/// Drivers ask the runtime whether they are in an ISR or a DPC before they block: the answer
/// must be yes there, in both modes, and no everywhere else.
@Suite("Interrupt level")
struct InterruptLevelTests {
    @Test(arguments: ExecutionMode.allCases)
    func isrsAndDPCsRunAtInterruptLevelAndNothingElseDoes(_ mode: ExecutionMode) throws {
        try withInterruptSource(mode) { runtime, vector, verifier in
            let isrLevels = Mutex<[Bool]>([])
            let dpcLevels = Mutex<[Bool]>([])
            let done = ConditionLock()
            nonisolated(unsafe) var finished = 0
            let dpc = runtime.makeDPC("level") {
                dpcLevels.withLock { $0.append(runtime.isAtInterruptLevel) }
                done.withLock {
                    finished += 1
                    done.broadcast()
                }
            }
            let attachment = try runtime.attachInterrupt(vector, name: "level", acknowledge: { 0 }) { _ in
                isrLevels.withLock { $0.append(runtime.isAtInterruptLevel) }
                dpc.queue()
            }
            func waitForDPC(_ count: Int) {
                done.withLock {
                    while finished < count {
                        guard done.wait(nanoseconds: 5_000_000_000) else { Issue.record("DPC \(count) did not run"); return }
                    }
                }
            }
            // A DPC queued from an ordinary thread runs on the DPC thread, also at interrupt level.
            #expect(!runtime.isAtInterruptLevel)
            dpc.queue()
            waitForDPC(1)
            for round in 1...20 {  // Then DPCs queued by the ISR, on the wait (or interrupt) thread.
                try vector.trigger()
                waitForDPC(round + 1)
            }
            runtime.detachInterrupt(attachment)
            #expect(!runtime.isAtInterruptLevel)
            #expect(isrLevels.withLock { $0 } == Array(repeating: true, count: 20))
            #expect(dpcLevels.withLock { $0 } == Array(repeating: true, count: 21))
            // Disabling interrupts is not interrupt level: the thread may still wait.
            runtime.withInterruptsDisabled { #expect(!runtime.isAtInterruptLevel) }
            #expect(verifier.reports.isEmpty, "\(verifier.reports)")
        }
    }
}
