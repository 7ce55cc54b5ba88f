import ModelessDevice
import ModelessModels
import ModelessRuntime
import ModelessSystem
import Synchronization
import Testing

/// The trace records a stage only where it happens: in user mode the generic ISR, DPC A and
/// the wait thread are one thread, recorded as one fused stage, never as separate stages with
/// no code between them.
@Suite("Interrupt trace")
struct InterruptTraceTests {
    @Test(arguments: ExecutionMode.allCases)
    func eachInterruptRecordsTheStagesThatRunInOrderOnOneThread(_ mode: ExecutionMode) throws {
        let trace = InterruptTrace()
        try withInterruptSource(mode, options: RuntimeOptions(interruptPriority: nil, dpcPriority: nil, trace: trace)) { runtime, vector, verifier in
            let ran = Atomic<Int>(0)
            let dpc = runtime.makeDPC("after") { ran.wrappingAdd(1, ordering: .releasing) }
            let attachment = try runtime.attachInterrupt(vector, name: "traced", acknowledge: { 0 }) { _ in dpc.queue() }
            let rounds = 20
            for round in 1...rounds {
                try vector.trigger()
                #expect(waitUntil { ran.load(ordering: .acquiring) == round })
            }
            runtime.detachInterrupt(attachment)

            let records = trace.snapshot()
            let expected: [InterruptTrace.Stage] = mode == .user
                ? [.notified, .genericISRFused, .lockTaken, .realISREnter, .realISRExit, .lockReleased]
                : [.notified, .lockTaken, .genericISR, .realISREnter, .realISRExit, .lockReleased]
            let interruptRecords = records.filter { $0.subject == attachment.identifier && $0.stage != .dpcStart && $0.stage != .dpcEnd }
            #expect(interruptRecords.count == rounds * expected.count)
            for start in stride(from: 0, to: interruptRecords.count, by: expected.count) {
                let group = Array(interruptRecords[start..<min(start + expected.count, interruptRecords.count)])
                #expect(group.map(\.stage) == expected)
                #expect(Set(group.map(\.thread)).count == 1, "one interrupt's stages run on one thread")
            }
            // Stages of the seed that no thread runs separately here are never recorded.
            #expect(!records.contains { $0.stage == .dpcA || $0.stage == .waitThreadWoken })
            if mode == .user { #expect(!records.contains { $0.stage == .genericISR }) }
            // Each DPC the ISR queued runs after that ISR, on the same thread (on the way out).
            let dpcStarts = records.filter { $0.stage == .dpcStart }
            #expect(dpcStarts.count == rounds)
            for dpcStart in dpcStarts {
                let isrExit = try #require(records.last { $0.stage == .realISRExit && $0.sequence < dpcStart.sequence })
                #expect(isrExit.thread == dpcStart.thread)
            }
            #expect(verifier.reports.isEmpty, "\(verifier.reports)")
        }
    }
}
