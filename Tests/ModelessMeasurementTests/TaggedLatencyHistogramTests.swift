import Dispatch
import Testing
@testable import ModelessMeasurement

/// The lock-free recorder counts in ``LatencyHistogram``'s buckets: what it gives is the
/// histogram of the same values recorded one by one.
@Suite("Tagged latency histogram")
struct TaggedLatencyHistogramTests {
    /// Values over the whole range: each bucket below 32 ns, powers of two and their
    /// neighbours, and the largest value.
    static let values: [UInt64] = Array(0..<40) + (5..<64).flatMap { bit in
        let power = UInt64(1) << UInt64(bit)
        return [power - 1, power, power + power / 3]
    } + [.max]

    @Test func recordingFromSeveralThreadsGivesTheHistogramOfTheSameValues() {
        let recorder = TaggedLatencyHistogram(tags: 1)
        let threads = 4
        DispatchQueue.concurrentPerform(iterations: threads) { _ in
            for value in Self.values { recorder.record(value) }
        }
        var expected = LatencyHistogram()
        for _ in 0..<threads { expected.add(LatencyHistogram(Self.values)) }
        let histogram = recorder.histogram
        #expect(histogram.buckets == expected.buckets)
        #expect(histogram.count == expected.count && histogram.minimum == 0 && histogram.maximum == .max)
        for percentile in [1.0, 50, 90, 99, 99.9, 100] {
            #expect(histogram.value(atPercentile: percentile) == expected.value(atPercentile: percentile), "p\(percentile)")
        }
        #expect(recorder.count == threads * Self.values.count)
    }

    @Test func aTaggedCommandsLatencyRunsFromItsStartToItsFinish() throws {
        let recorder = TaggedLatencyHistogram(tags: 8)
        recorder.start(3, at: 1_000)
        recorder.start(5, at: 2_000)
        recorder.finish(5, at: 2_250)
        recorder.finish(3, at: 1_900)
        let histogram = recorder.histogram
        #expect(histogram == LatencyHistogram([250, 900]))
        #expect(histogram.mean == 575)
        #expect(recorder.percentile(0.5) == histogram.value(atPercentile: 50))
        recorder.reset()
        #expect(recorder.count == 0 && recorder.percentile(0.5) == nil && recorder.histogram == LatencyHistogram())
    }

    @Test func countsKeptElsewhereBecomeTheSameHistogram() {
        let direct = LatencyHistogram(Self.values)
        var counts = [UInt64](repeating: 0, count: LatencyHistogram.bucketCount)
        for value in Self.values { counts[LatencyHistogram.bucketIndex(of: value)] += 1 }
        let rebuilt = LatencyHistogram(bucketCounts: counts, minimum: 0, maximum: .max, total: Self.values.reduce(0.0) { $0 + Double($1) })
        #expect(rebuilt == direct)
        #expect(LatencyHistogram(bucketCounts: [], minimum: 7, maximum: 9, total: 3) == LatencyHistogram())
    }
}
