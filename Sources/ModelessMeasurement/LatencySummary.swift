/// A histogram as a benchmark reports it in JSON: the named series, its count, extremes,
/// mean, percentiles and the buckets that hold values, all in nanoseconds.
public struct LatencySummary: Codable, Sendable, Equatable {
    /// The percentiles every summary gives.
    public static let percentiles: [Double] = [50, 90, 99, 99.9, 99.99]

    /// What was measured (the benchmark's path or configuration).
    public var name: String
    /// Always `ns`.
    public var unit: String
    /// How many values were recorded.
    public var count: UInt64
    /// The smallest value recorded, in nanoseconds (0 when none was).
    public var min: UInt64
    /// The largest value recorded, in nanoseconds (0 when none was).
    public var max: UInt64
    /// The arithmetic mean of the values, in nanoseconds (exact, not from the buckets).
    public var mean: Double
    /// `p50`, `p90`, `p99`, `p99.9`, `p99.99`: see ``LatencyHistogram/value(atPercentile:)``.
    public var percentiles: [String: UInt64]
    /// `[lowerBound, upperBound, count]` for each bucket that holds values: `count` values in
    /// `lowerBound..<upperBound` ns.
    public var buckets: [[UInt64]]

    /// The summary of `histogram`, named `name`.
    public init(name: String, histogram: LatencyHistogram) {
        self.name = name
        unit = "ns"
        count = histogram.count
        min = histogram.minimum
        max = histogram.maximum
        mean = histogram.mean
        percentiles = [:]
        for percentile in Self.percentiles { percentiles[Self.key(percentile)] = histogram.value(atPercentile: percentile) }
        buckets = histogram.buckets.map { [$0.range.lowerBound, $0.range.upperBound, $0.count] }
    }

    /// `p50`, `p99.9`.
    public static func key(_ percentile: Double) -> String {
        percentile == percentile.rounded() ? "p\(Int(percentile))" : "p\(percentile)"
    }
}
