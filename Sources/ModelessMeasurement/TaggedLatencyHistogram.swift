import CModelessShim
import Synchronization

/// Latencies in nanoseconds recorded from any thread without a lock or an allocation on the
/// measured path (SPDK perf's and fio's way), in the buckets of ``LatencyHistogram``: each
/// recording adds one to an atomic counter indexed by ``LatencyHistogram/bucketIndex(of:)``,
/// and ``histogram`` reads the counters into a ``LatencyHistogram`` for percentiles, JSON and
/// pictures. Also keeps the start time of each tag in flight, so that a completion handler
/// can record the latency of the command it completes.
public final class TaggedLatencyHistogram: @unchecked Sendable {
    private let counts = UnsafeMutablePointer<UInt32>.allocate(capacity: LatencyHistogram.bucketCount)
    private let started: UnsafeMutablePointer<UInt64>
    private let smallest = Atomic<UInt64>(.max)
    private let largest = Atomic<UInt64>(0)
    private let sum = Atomic<UInt64>(0)
    /// The most tags ``start(_:at:)`` takes (tags are 0 to this less one).
    public let tagCapacity: Int

    /// A recorder for commands tagged 0 to `tags` - 1.
    public init(tags: Int) {
        precondition(tags > 0, "a latency histogram needs room for one tag or more")
        tagCapacity = tags
        started = .allocate(capacity: tags)
        started.initialize(repeating: 0, count: tags)
        counts.initialize(repeating: 0, count: LatencyHistogram.bucketCount)
    }

    deinit {
        counts.deallocate()
        started.deallocate()
    }

    /// Forgets every latency counted (call it between measurements, with nothing recording).
    public func reset() {
        counts.update(repeating: 0, count: LatencyHistogram.bucketCount)
        smallest.store(.max, ordering: .relaxed)
        largest.store(0, ordering: .relaxed)
        sum.store(0, ordering: .relaxed)
    }

    /// Notes that the command with `tag` was submitted at `now` (monotonic nanoseconds).
    @inline(__always)
    public func start(_ tag: UInt64, at now: UInt64) {
        started[Int(tag)] = now
    }

    /// Counts the latency of the command with `tag`, completed at `now`.
    @inline(__always)
    public func finish(_ tag: UInt64, at now: UInt64) {
        let began = started[Int(tag)]
        record(now >= began ? now - began : 0)
    }

    /// Counts one latency.
    public func record(_ nanoseconds: UInt64) {
        _ = modeless_fetch_add_seqcst32(counts + LatencyHistogram.bucketIndex(of: nanoseconds), 1)
        sum.wrappingAdd(nanoseconds, ordering: .relaxed)
        var low = smallest.load(ordering: .relaxed)
        while nanoseconds < low {
            let (exchanged, now) = smallest.weakCompareExchange(expected: low, desired: nanoseconds, ordering: .relaxed)
            if exchanged { break }
            low = now
        }
        var high = largest.load(ordering: .relaxed)
        while nanoseconds > high {
            let (exchanged, now) = largest.weakCompareExchange(expected: high, desired: nanoseconds, ordering: .relaxed)
            if exchanged { break }
            high = now
        }
    }

    /// What was counted, as a histogram (read while recording goes on, it holds some of the
    /// latest latencies and not others).
    public var histogram: LatencyHistogram {
        let buckets = (0..<LatencyHistogram.bucketCount).map { UInt64(modeless_load_seqcst32(counts + $0)) }
        return LatencyHistogram(bucketCounts: buckets, minimum: smallest.load(ordering: .relaxed),
                                maximum: largest.load(ordering: .relaxed), total: Double(sum.load(ordering: .relaxed)))
    }

    /// How many latencies were counted.
    public var count: Int { Int(histogram.count) }

    /// The latency at or below which `fraction` (0 to 1) of the counted ones fall, in
    /// nanoseconds (``LatencyHistogram/value(atPercentile:)``); nil if none was counted.
    public func percentile(_ fraction: Double) -> UInt64? {
        let histogram = histogram
        return histogram.count == 0 ? nil : histogram.value(atPercentile: fraction * 100)
    }
}
