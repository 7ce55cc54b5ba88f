import CModelessShim
import ModelessSystem
import Synchronization

/// An opt-in record of what happened to each interrupt, stage by stage, with the CPU and a
/// monotonic timestamp: cheap enough to leave compiled in (a nil check when off; one atomic
/// increment and a store when on).
public final class InterruptTrace: @unchecked Sendable {
    /// The stages, in the order the seed's pipeline goes through them.
    public enum Stage: UInt8, Sendable, CaseIterable, CustomStringConvertible {
        /// The interrupt's notification arrived (the eventfd became readable).
        case notified
        /// The generic ISR ran the driver's acknowledge routine and saved the device state.
        case genericISR
        /// DPC A, which wakes the wait thread: a stage of the seed's pipeline that the
        /// in-process runtimes never run separately (see ``genericISRFused``), so never recorded.
        case dpcA
        /// The wait thread resumed after DPC A woke it: never recorded, as ``dpcA``.
        case waitThreadWoken
        /// The interrupt lock's write side was taken (user mode) or the controller entered
        /// interrupt level (kernel emulation).
        case lockTaken
        case realISREnter
        case realISRExit
        case lockReleased
        /// A DPC started and finished.
        case dpcStart
        case dpcEnd
        /// Interrupts disabled and enabled by driver code (the outermost of nested calls).
        case interruptsDisabled
        case interruptsEnabled
        /// An interrupt was held by the masked controller, to be delivered on enable.
        case latched
        /// User mode: the generic ISR ran the driver's acknowledge routine and saved the device
        /// state on the wait thread itself, which is already awake: the seed's generic ISR,
        /// DPC A and wait-thread wake-up are one stage on one thread, recorded once.
        case genericISRFused

        /// The stage's name in traces: `real ISR enter`, `DPC start`.
        public var description: String {
            switch self {
            case .notified: "notified"
            case .genericISR: "generic ISR"
            case .dpcA: "DPC A"
            case .waitThreadWoken: "wait thread woken"
            case .lockTaken: "lock taken"
            case .realISREnter: "real ISR enter"
            case .realISRExit: "real ISR exit"
            case .lockReleased: "lock released"
            case .dpcStart: "DPC start"
            case .dpcEnd: "DPC end"
            case .interruptsDisabled: "interrupts disabled"
            case .interruptsEnabled: "interrupts enabled"
            case .latched: "latched"
            case .genericISRFused: "generic ISR + DPC A + wait thread woken (one thread)"
            }
        }
    }

    /// One traced event.
    public struct Record: Sendable, Equatable {
        /// The record's number, from 0, in the order records were made (across all threads).
        public var sequence: Int
        /// What happened.
        public var stage: Stage
        /// The attachment (interrupt) or DPC it concerns; -1 for none.
        public var subject: Int32
        /// The CPU the recording thread ran on.
        public var cpu: Int16
        /// The recording thread's kernel thread id.
        public var thread: UInt32
        /// When, on the monotonic clock.
        public var nanoseconds: UInt64
    }

    /// How many records the trace keeps: the latest ones.
    public let capacity: Int
    private let records: UnsafeMutablePointer<Record>
    private let next = Atomic<Int>(0)

    /// A trace keeping the last `capacity` records.
    public init(capacity: Int = 1 << 16) {
        precondition(capacity > 0)
        self.capacity = capacity
        records = .allocate(capacity: capacity)
        records.initialize(repeating: Record(sequence: -1, stage: .notified, subject: -1, cpu: -1, thread: 0, nanoseconds: 0),
                           count: capacity)
    }

    deinit { records.deallocate() }

    /// Records that `stage` happened now for `subject` (an attachment or DPC; -1 for none).
    /// Called by the runtime; lock-free, allocation-free.
    @inline(__always)
    public func record(_ stage: Stage, _ subject: Int32) {
        let sequence = next.wrappingAdd(1, ordering: .relaxed).oldValue
        records[sequence % capacity] = Record(sequence: sequence, stage: stage, subject: subject,
                                              cpu: Int16(truncatingIfNeeded: SystemThread.currentCPU),
                                              thread: UInt32(truncatingIfNeeded: modeless_thread_id()), nanoseconds: monotonicNanoseconds())
    }

    /// How many records were made in all (older ones beyond `capacity` are overwritten).
    public var count: Int { next.load(ordering: .relaxed) }

    /// The records still held, oldest first. Call when tracing has stopped.
    public func snapshot() -> [Record] {
        let total = count
        let first = max(0, total - capacity)
        return (first..<total).map { records[$0 % capacity] }.filter { $0.sequence >= 0 }
    }

    /// Readable lines: `+12.345 µs  cpu 1  thread 4242  real ISR enter  (interrupt 0)`.
    public func render() -> String {
        let all = snapshot()
        guard let start = all.first?.nanoseconds else { return "(no records)" }
        return all.map { record in
            let micros = Double(record.nanoseconds - start) / 1000
            return "+\(String(format3(micros))) µs  cpu \(record.cpu)  thread \(record.thread)  \(record.stage)"
                + (record.subject >= 0 ? "  (\(record.subject))" : "")
        }.joined(separator: "\n")
    }
}

func format3(_ value: Double) -> String {
    let scaled = (value * 1000).rounded() / 1000
    let whole = Int(scaled)
    let fraction = Int(((scaled - Double(whole)) * 1000).rounded())
    let digits = String(fraction)
    return "\(whole).\(String(repeating: "0", count: 3 - digits.count))\(digits)"
}

#if canImport(Glibc)
import Glibc
#endif
