/// Latencies in nanoseconds counted in buckets whose width grows with the value, so that a
/// few kilobytes hold any number of samples from 1 ns to hours with a bounded relative error
/// (the scheme of HdrHistogram, at 5 significant bits).
///
/// Below 32 ns every value has its own bucket. Above, each power of two [2^e, 2^(e+1)) is cut
/// into 32 buckets of equal width 2^(e-5): a bucket is at most 1/32 (3.1 %) of its lower bound
/// wide. ``value(atPercentile:)`` answers with the highest value of the bucket that holds the
/// rank, so it is never below the true percentile and at most 3.1 % above it.
public struct LatencyHistogram: Sendable, Equatable {
    /// Bits of a value kept exactly: 2^subBucketBits buckets per power of two.
    static let subBucketBits = 5
    static let subBuckets = UInt64(1) << subBucketBits

    /// Counts per bucket index, grown on demand.
    private(set) var counts: [UInt64] = []
    /// The number of values recorded.
    public private(set) var count: UInt64 = 0
    /// The smallest value recorded (0 when empty).
    public private(set) var minimum: UInt64 = 0
    /// The largest value recorded (0 when empty), exact rather than a bucket's bound.
    public private(set) var maximum: UInt64 = 0
    private var total: Double = 0

    /// An empty histogram.
    public init() {}

    /// A histogram of `values`.
    public init<Values: Sequence>(_ values: Values) where Values.Element == UInt64 {
        for value in values { record(value) }
    }

    /// Counts one value.
    public mutating func record(_ value: UInt64) {
        let index = Self.bucketIndex(of: value)
        if index >= counts.count { counts += repeatElement(0, count: index + 1 - counts.count) }
        counts[index] += 1
        minimum = count == 0 ? value : Swift.min(minimum, value)
        maximum = count == 0 ? value : Swift.max(maximum, value)
        count += 1
        total += Double(value)
    }

    /// Adds every value counted in `other`.
    public mutating func add(_ other: LatencyHistogram) {
        guard other.count > 0 else { return }
        if other.counts.count > counts.count { counts += repeatElement(0, count: other.counts.count - counts.count) }
        for (index, value) in other.counts.enumerated() { counts[index] += value }
        minimum = count == 0 ? other.minimum : Swift.min(minimum, other.minimum)
        maximum = count == 0 ? other.maximum : Swift.max(maximum, other.maximum)
        count += other.count
        total += other.total
    }

    /// The mean of the values recorded (0 when empty).
    public var mean: Double { count == 0 ? 0 : total / Double(count) }

    /// The value at `percentile` (0...100): the highest value of the bucket holding the
    /// sample of that rank, capped at ``maximum``; 0 when empty.
    public func value(atPercentile percentile: Double) -> UInt64 {
        precondition((0...100).contains(percentile), "a percentile is between 0 and 100, not \(percentile)")
        guard count > 0 else { return 0 }
        let rank = Swift.max(1, UInt64((percentile / 100 * Double(count)).rounded(.up)))
        var seen: UInt64 = 0
        for (index, value) in counts.enumerated() where value > 0 {
            seen += value
            if seen >= rank { return Swift.min(maximum, Self.bucketRange(index).upperBound - 1) }
        }
        return maximum
    }

    /// The buckets that hold values, in increasing order: each bucket's values are
    /// `lowerBound..<upperBound` nanoseconds.
    public var buckets: [Bucket] {
        counts.enumerated().compactMap { index, value in
            value == 0 ? nil : Bucket(range: Self.bucketRange(index), count: value)
        }
    }

    /// One bucket: its values and how many were counted.
    public struct Bucket: Sendable, Equatable {
        /// The values it counts, in nanoseconds.
        public var range: Range<UInt64>
        /// How many values fell in it.
        public var count: UInt64
    }

    /// How many buckets values up to `UInt64.max` use: a fixed array of this many counters,
    /// indexed by ``bucketIndex(of:)``, counts any value without growing (what a recorder that
    /// cannot allocate on its measured path keeps, as ``TaggedLatencyHistogram`` does), and
    /// ``init(bucketCounts:minimum:maximum:total:)`` turns the counts into a histogram.
    public static let bucketCount = bucketIndex(of: .max) + 1

    /// A histogram of counts kept elsewhere: `bucketCounts[i]` values in bucket `i` (see
    /// ``bucketIndex(of:)``), the smallest and the largest of them, and their sum.
    public init(bucketCounts: [UInt64], minimum: UInt64, maximum: UInt64, total: Double) {
        precondition(bucketCounts.count <= Self.bucketCount, "\(bucketCounts.count) bucket counts: a histogram has \(Self.bucketCount) buckets")
        counts = bucketCounts.lastIndex { $0 > 0 }.map { Array(bucketCounts[...$0]) } ?? []
        count = counts.reduce(0, +)
        self.minimum = count == 0 ? 0 : minimum
        self.maximum = count == 0 ? 0 : maximum
        self.total = count == 0 ? 0 : total
    }

    /// The bucket that counts `value`.
    public static func bucketIndex(of value: UInt64) -> Int {
        guard value >= subBuckets else { return Int(value) }
        let exponent = 63 - value.leadingZeroBitCount  // value is in [2^exponent, 2^(exponent+1))
        let shift = exponent - subBucketBits
        let sub = (value >> UInt64(shift)) - subBuckets
        return Int(subBuckets) + shift * Int(subBuckets) + Int(sub)
    }

    /// The values bucket `index` counts.
    static func bucketRange(_ index: Int) -> Range<UInt64> {
        guard index >= Int(subBuckets) else { return UInt64(index)..<UInt64(index + 1) }
        let shift = (index - Int(subBuckets)) / Int(subBuckets)
        let sub = UInt64((index - Int(subBuckets)) % Int(subBuckets))
        let lower = (subBuckets + sub) << UInt64(shift)
        let (upper, overflow) = lower.addingReportingOverflow(UInt64(1) << UInt64(shift))
        return lower..<(overflow ? UInt64.max : upper)
    }
}
