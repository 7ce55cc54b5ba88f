import ModelessDevice
import ModelessMeasurement
import ModelessModels
import ModelessRuntime
import ModelessSystem
import Synchronization

/// Interrupt-to-handler latency and sustained rate, for a bare eventfd wake-up and for the
/// runtime's two modes, measured in one run so that they can be compared as ratios.
package struct InterruptBenchmark {
    /// One path's latencies (µs) and sustained rates.
    package struct Result {
        /// The path: the eventfd baseline, user mode or the kernel emulation.
        package var name: String
        /// The median latency, µs.
        package var p50: Double
        /// The 99th-percentile latency, µs.
        package var p99: Double
        /// Every latency sample, in nanoseconds.
        package var histogram: LatencyHistogram
        /// Handler (ISR) calls per second while flooded.
        package var handlerCallsPerSecond: Double
        /// Interrupts raised per second while flooded.
        package var interruptsPerSecond: Double
    }

    /// Latency samples per path.
    package let samples: Int
    /// Seconds of flooding for the sustained rate.
    package let rateSeconds: Double
    /// Where interrupts come from: a fresh device per run (a model, or a real device's vector).
    package let openSource: () throws -> (device: any DeviceAccess, vector: InterruptVector)

    /// A benchmark of `samples` latencies and `rateSeconds` of flooding per path, each path on an
    /// interrupt source `openSource` opens (a device model's MSI, or a device bound to vfio-pci).
    package init(samples: Int, rateSeconds: Double, openSource: @escaping () throws -> (device: any DeviceAccess, vector: InterruptVector)) {
        self.samples = samples
        self.rateSeconds = rateSeconds
        self.openSource = openSource
    }

    /// The baseline: a thread blocked in `read` on the same source's eventfd, woken by the same
    /// trigger, pinned and prioritized as the runtime's wait thread is, doing nothing else.
    package func baseline() throws -> Result {
        let (device, vector) = try openSource()
        defer { device.close() }
        let back = try EventNotifier()
        defer { back.close() }
        let sentAt = Atomic<UInt64>(0)
        let latencies = Samples(samples)
        let mode = Atomic<Int>(0)  // 0: latency, 1: rate, 2: stop
        let woken = Atomic<Int>(0)
        let counted = Atomic<Int>(0)
        let waiter = try SystemThread(name: "baseline", placement: .init(cpu: 0, realtimePriority: 50)) {
            var index = 0
            while true {
                guard let count = try? vector.wait() else { return }
                let now = monotonicNanoseconds()
                switch mode.load(ordering: .acquiring) {
                case 0:
                    if index < latencies.values.count { latencies.values[index] = now - sentAt.load(ordering: .acquiring); index += 1 }
                    try? back.signal()
                case 1:
                    woken.wrappingAdd(1, ordering: .relaxed)
                    counted.wrappingAdd(Int(count), ordering: .relaxed)
                default:
                    return
                }
            }
        }
        for _ in 0..<samples {
            sentAt.store(monotonicNanoseconds(), ordering: .releasing)
            try vector.trigger()
            _ = try back.wait()
        }
        mode.store(1, ordering: .releasing)
        let start = monotonicNanoseconds()
        let (_, sent) = try flood { try vector.trigger() }
        let deadline = monotonicNanoseconds() + 10_000_000_000
        while counted.load(ordering: .relaxed) < sent && monotonicNanoseconds() < deadline { usleep(200) }
        let elapsed = Double(monotonicNanoseconds() - start) / 1e9
        mode.store(2, ordering: .releasing)
        try vector.trigger()
        waiter.join()
        return summarize("eventfd wake-up (baseline)", latencies, woken.load(ordering: .relaxed),
                         counted.load(ordering: .relaxed), elapsed)
    }

    /// The runtime in `mode`: from the trigger to the real ISR's first instruction.
    package func runtime(_ mode: ExecutionMode) throws -> Result {
        let (device, vector) = try openSource()
        defer { device.close() }
        let runtime = try makeRuntime(mode)
        defer { runtime.shutdown() }
        let back = try EventNotifier()
        defer { back.close() }
        let sentAt = Atomic<UInt64>(0)
        let measuring = Atomic<Bool>(true)
        let latencies = Samples(samples)
        let index = Atomic<Int>(0)
        // The ISR takes a spin lock, as a driver's ISR does for what it shares with its DPC
        // and threads; the latency is stamped before it, at the ISR's first instruction.
        let shared = runtime.makeSpinLock("bench", 0)
        let attachment = try runtime.attachInterrupt(vector, name: "bench", acknowledge: { 0 }) { _ in
            let now = monotonicNanoseconds()
            shared.withLock { $0 &+= 1 }
            guard measuring.load(ordering: .acquiring) else { return }
            let slot = index.wrappingAdd(1, ordering: .relaxed).oldValue
            if slot < latencies.values.count { latencies.values[slot] = now - sentAt.load(ordering: .acquiring) }
            try? back.signal()
        }
        for _ in 0..<samples {
            sentAt.store(monotonicNanoseconds(), ordering: .releasing)
            try vector.trigger()
            _ = try back.wait()
        }
        measuring.store(false, ordering: .releasing)
        let callsBefore = attachment.isrCalls
        let interruptsBefore = attachment.interrupts
        let start = monotonicNanoseconds()
        let (_, sent) = try flood { try vector.trigger() }
        // Let the pipeline finish what was sent, so that rates count handled interrupts only.
        let deadline = monotonicNanoseconds() + 10_000_000_000
        while attachment.interrupts - interruptsBefore < sent && monotonicNanoseconds() < deadline { usleep(200) }
        let elapsed = Double(monotonicNanoseconds() - start) / 1e9
        return summarize("\(mode) pipeline", latencies, attachment.isrCalls - callsBefore,
                         attachment.interrupts - interruptsBefore, elapsed)
    }

    /// Raises as fast as possible for `rateSeconds`; returns the time taken and the count.
    private func flood(_ raise: () throws -> Void) throws -> (Double, Int) {
        let start = monotonicNanoseconds()
        let end = start + UInt64(rateSeconds * 1e9)
        var sent = 0
        while monotonicNanoseconds() < end {
            for _ in 0..<64 { try raise() }
            sent += 64
        }
        return (Double(monotonicNanoseconds() - start) / 1e9, sent)
    }

    /// Latency samples written by the measured thread, read after it stopped.
    package final class Samples: @unchecked Sendable {
        let values: UnsafeMutableBufferPointer<UInt64>
        init(_ count: Int) {
            values = .allocate(capacity: count)
            values.initialize(repeating: 0)
        }
        deinit { values.deallocate() }
    }

    private func summarize(_ name: String, _ latencies: Samples,
                           _ calls: Int, _ interrupts: Int, _ seconds: Double) -> Result {
        let sorted = Array(latencies.values).sorted()
        func percentile(_ p: Double) -> Double { Double(sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]) / 1000 }
        return Result(name: name, p50: percentile(0.50), p99: percentile(0.99), histogram: LatencyHistogram(sorted),
                      handlerCallsPerSecond: Double(calls) / seconds, interruptsPerSecond: Double(interrupts) / seconds)
    }
}

#if canImport(Glibc)
import Glibc
#endif
