import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

extension InterruptTrace {
    /// The trace in Chrome's trace-event format (JSON), which Perfetto (ui.perfetto.dev) and
    /// chrome://tracing open: one track per thread, time in microseconds from the earliest record.
    ///
    /// A stage that begins and one that ends it on the same thread become one complete event
    /// (`"ph": "X"`, with its duration): the interrupt lock held (or, in the kernel emulation, the
    /// controller at interrupt level), the real ISR, a DPC, interrupts disabled by driver code.
    /// Every other stage is an instant event (`"ph": "i"`) where it was recorded, named as
    /// ``Stage/description`` names it: the user-mode fused stage stays one event, and no event
    /// stands for a stage that did not run. A begin or end whose partner is not in the trace
    /// (overwritten in the ring, or still running) is an instant event with `"unpaired": true`.
    /// Each event's `args` carry the `subject` (interrupt attachment or DPC), the `cpu` and the
    /// record's `sequence`. Per thread the events are in the order the thread recorded them, so
    /// their timestamps never decrease. Threads still running are named (`"thread_name"`
    /// metadata, from `/proc/self/task/TID/comm`).
    ///
    /// Call when tracing has stopped, like ``snapshot()``.
    public func chromeTraceJSON(processName: String = "modeless") -> String {
        let records = snapshot()
        var threadNames: [UInt32: String] = [:]
        for thread in Set(records.map(\.thread)) {
            if let name = FileAccess.readTextIfPresent("/proc/self/task/\(thread)/comm") { threadNames[thread] = name }
        }
        return ChromeTraceEvents(records: records, processID: getpid(), processName: processName, threadNames: threadNames).json
    }
}

/// Builds the trace-event JSON for ``InterruptTrace/chromeTraceJSON(processName:)``.
struct ChromeTraceEvents {
    /// One event to write, anchored at the sequence number of the record where it begins.
    private struct Event {
        var anchor: Int
        var text: String
    }

    let json: String

    init(records: [InterruptTrace.Record], processID: Int32, processName: String, threadNames: [UInt32: String] = [:]) {
        let origin = records.map(\.nanoseconds).min() ?? 0
        func microseconds(_ nanoseconds: UInt64) -> String { format3(Double(nanoseconds) / 1000) }
        func args(_ record: InterruptTrace.Record, unpaired: Bool = false) -> String {
            "{\"subject\":\(record.subject),\"cpu\":\(record.cpu),\"sequence\":\(record.sequence)" + (unpaired ? ",\"unpaired\":true}" : "}")
        }
        func common(_ name: String, _ record: InterruptTrace.Record) -> String {
            "\"name\":\"\(Self.escaped(name))\",\"cat\":\"\(Self.category(record.stage))\",\"pid\":\(processID),\"tid\":\(record.thread)"
        }
        func instant(_ record: InterruptTrace.Record, unpaired: Bool = false) -> Event {
            Event(anchor: record.sequence, text: "{\(common(record.stage.description, record)),\"ph\":\"i\",\"s\":\"t\","
                  + "\"ts\":\(microseconds(record.nanoseconds - origin)),\"args\":\(args(record, unpaired: unpaired))}")
        }

        var events: [Event] = []
        var open: [UInt32: [InterruptTrace.Record]] = [:]  // begun and not yet ended, per thread
        for record in records {
            if Self.endStage(of: record.stage) != nil {
                open[record.thread, default: []].append(record)
            } else if let begin = Self.beginStage(of: record.stage) {
                var stack = open[record.thread] ?? []
                if let index = stack.lastIndex(where: { $0.stage == begin && $0.subject == record.subject }) {
                    let start = stack.remove(at: index)
                    events.append(Event(anchor: start.sequence, text: "{\(common(Self.spanName(begin), start)),\"ph\":\"X\","
                        + "\"ts\":\(microseconds(start.nanoseconds - origin)),\"dur\":\(microseconds(record.nanoseconds - start.nanoseconds)),"
                        + "\"args\":\(args(start))}"))
                } else {
                    events.append(instant(record, unpaired: true))
                }
                open[record.thread] = stack
            } else {
                events.append(instant(record))
            }
        }
        for record in open.values.joined() { events.append(instant(record, unpaired: true)) }
        events.sort { $0.anchor < $1.anchor }

        let metadata = "{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":\(processID),\"tid\":0,\"args\":{\"name\":\"\(Self.escaped(processName))\"}}"
        let names = threadNames.sorted { $0.key < $1.key }.map { thread, name in
            "{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":\(processID),\"tid\":\(thread),\"args\":{\"name\":\"\(Self.escaped(name))\"}}"
        }
        json = "{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n" + ([metadata] + names + events.map(\.text)).joined(separator: ",\n") + "\n]}\n"
    }

    /// The stage that ends a span begun by `stage`, if it begins one.
    static func endStage(of stage: InterruptTrace.Stage) -> InterruptTrace.Stage? {
        switch stage {
        case .lockTaken: .lockReleased
        case .realISREnter: .realISRExit
        case .dpcStart: .dpcEnd
        case .interruptsDisabled: .interruptsEnabled
        default: nil
        }
    }

    /// The stage that begins the span `stage` ends, if it ends one.
    static func beginStage(of stage: InterruptTrace.Stage) -> InterruptTrace.Stage? {
        InterruptTrace.Stage.allCases.first { endStage(of: $0) == stage }
    }

    /// The name of the span begun by `stage`.
    static func spanName(_ stage: InterruptTrace.Stage) -> String {
        switch stage {
        case .lockTaken: "interrupt lock held"
        case .realISREnter: "real ISR"
        case .dpcStart: "DPC"
        case .interruptsDisabled: "interrupts disabled"
        default: stage.description
        }
    }

    /// `dpc` for a DPC's stages (their subject is the DPC), `interrupt` for the rest.
    static func category(_ stage: InterruptTrace.Stage) -> String {
        stage == .dpcStart || stage == .dpcEnd ? "dpc" : "interrupt"
    }

    /// `text` as the inside of a JSON string.
    static func escaped(_ text: String) -> String {
        var result = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": result += "\\\""
            case "\\": result += "\\\\"
            case "\n": result += "\\n"
            case "\t": result += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                result += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: result.unicodeScalars.append(scalar)
            }
        }
        return result
    }
}
