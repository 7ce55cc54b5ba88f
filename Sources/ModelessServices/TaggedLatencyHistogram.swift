import CModelessShim

/// Latencies in nanoseconds, counted in fixed buckets (each power of two split in 16, so a
/// percentile is exact to within 1/16, about 6%), for percentiles without allocating or sorting
/// on the measured path: SPDK perf's and fio's way. Any thread may record; counts are atomic.
/// Also keeps the start time of each tag in flight, so a completion handler can record the
/// latency of the command it completes.
package final class TaggedLatencyHistogram: @unchecked Sendable {
    /// Buckets: 16 for 0–15 ns, then 16 per power of two up to 2^63.
    private static let bucketCount = 16 * 61
    private let counts = UnsafeMutablePointer<UInt32>.allocate(capacity: bucketCount)
    private let started: UnsafeMutablePointer<UInt64>
    /// The most tags ``start(_:at:)`` takes (tags are 0 to this less one).
    package let tagCapacity: Int

    package init(tags: Int) {
        precondition(tags > 0, "a latency histogram needs room for one tag or more")
        tagCapacity = tags
        started = .allocate(capacity: tags)
        started.initialize(repeating: 0, count: tags)
        counts.initialize(repeating: 0, count: Self.bucketCount)
    }

    deinit {
        counts.deallocate()
        started.deallocate()
    }

    /// Forgets every latency counted (call it between measurements, with nothing recording).
    package func reset() {
        counts.update(repeating: 0, count: Self.bucketCount)
    }

    /// Notes that the command with `tag` was submitted at `now` (monotonic nanoseconds).
    @inline(__always)
    package func start(_ tag: UInt64, at now: UInt64) {
        started[Int(tag)] = now
    }

    /// Counts the latency of the command with `tag`, completed at `now`.
    @inline(__always)
    package func finish(_ tag: UInt64, at now: UInt64) {
        let began = started[Int(tag)]
        record(now >= began ? now - began : 0)
    }

    /// Counts one latency.
    package func record(_ nanoseconds: UInt64) {
        _ = modeless_fetch_add_seqcst32(counts + Self.bucket(of: nanoseconds), 1)
    }

    /// How many latencies were counted.
    package var count: Int {
        (0..<Self.bucketCount).reduce(0) { $0 + Int(modeless_load_seqcst32(counts + $1)) }
    }

    /// The latency at or below which `fraction` (0 to 1) of the counted ones fall, in
    /// nanoseconds: the upper end of its bucket; nil if none was counted.
    package func percentile(_ fraction: Double) -> UInt64? {
        let total = count
        guard total > 0 else { return nil }
        let rank = max(1, Int((fraction * Double(total)).rounded(.up)))
        var seen = 0
        for bucket in 0..<Self.bucketCount {
            seen += Int(modeless_load_seqcst32(counts + bucket))
            if seen >= rank { return Self.upperBound(of: bucket) }
        }
        return Self.upperBound(of: Self.bucketCount - 1)
    }

    /// The bucket of `value`: the value itself below 16; else its power of two and the next
    /// four bits below the leading one.
    package static func bucket(of value: UInt64) -> Int {
        guard value >= 16 else { return Int(value) }
        let exponent = 63 - value.leadingZeroBitCount  // 4 or more
        let sub = Int((value >> UInt64(exponent - 4)) & 15)
        return (exponent - 3) * 16 + sub
    }

    /// The largest value in `bucket`.
    package static func upperBound(of bucket: Int) -> UInt64 {
        guard bucket >= 16 else { return UInt64(bucket) }
        let exponent = bucket / 16 + 3
        let sub = UInt64(bucket % 16)
        let next = (16 + sub + 1) << UInt64(exponent - 4)
        return next == 0 ? .max : next - 1  // the top bucket ends at 2^64 - 1
    }
}
