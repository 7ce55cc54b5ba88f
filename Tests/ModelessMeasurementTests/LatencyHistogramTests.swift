#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import ModelessMeasurement

@Suite("Latency histogram")
struct LatencyHistogramTests {
    /// Every value lands in a bucket that contains it, and buckets tile the values without gaps.
    @Test(arguments: [0, 1, 31, 32, 33, 63, 64, 65, 1000, 4095, 4096, 123_456_789, UInt64(1) << 40, UInt64.max / 2] as [UInt64])
    func aValueFallsInTheBucketThatContainsIt(_ value: UInt64) {
        let index = LatencyHistogram.bucketIndex(of: value)
        let range = LatencyHistogram.bucketRange(index)
        #expect(range.contains(value), "\(value) in bucket \(index) \(range)")
        #expect(LatencyHistogram.bucketRange(index + 1).lowerBound == range.upperBound)
        // At most 1/32 of the lower bound wide: the bounded relative error.
        #expect(range.count <= max(1, Int(range.lowerBound / 32)))
    }

    @Test func percentilesAreExactBelow32NanosecondsAndWithin3PercentAbove() {
        let small = LatencyHistogram((1...20).map(UInt64.init))
        #expect(small.value(atPercentile: 50) == 10)
        #expect(small.value(atPercentile: 100) == 20)
        #expect(small.value(atPercentile: 0) == 1)

        // 1,000..100,000 ns in steps of 1 ns: the true p50 is 50,500, p99 99,010.
        let values = (1_000...100_000).map(UInt64.init)
        let histogram = LatencyHistogram(values.shuffled())
        #expect(histogram.count == UInt64(values.count))
        #expect(histogram.minimum == 1_000 && histogram.maximum == 100_000)
        #expect(histogram.mean == 50_500)
        for (percentile, truth) in [(50.0, 50_500.0), (99.0, 99_010.0), (99.9, 99_901.0)] {
            let answer = Double(histogram.value(atPercentile: percentile))
            #expect(answer >= truth && answer <= truth * (1 + 1.0 / 32), "p\(percentile): \(answer) for \(truth)")
        }
        #expect(histogram.buckets.reduce(0) { $0 + $1.count } == histogram.count)
    }

    @Test func addingHistogramsCountsBoth() {
        var first = LatencyHistogram([5, 1_000, 7_000])
        let second = LatencyHistogram([2, 90_000])
        first.add(second)
        #expect(first == LatencyHistogram([5, 1_000, 7_000, 2, 90_000]))
        #expect(first.minimum == 2 && first.maximum == 90_000 && first.count == 5)
        #expect(LatencyHistogram().value(atPercentile: 99) == 0)
    }

    @Test func theSummaryGivesPercentilesAndBuckets() {
        let summary = LatencySummary(name: "path", histogram: LatencyHistogram([100, 200, 300, 5_000]))
        #expect(summary.unit == "ns" && summary.count == 4 && summary.min == 100 && summary.max == 5_000)
        #expect(summary.percentiles["p50"] == 203)  // the highest value of 200's bucket, 200..<204
        #expect(summary.percentiles["p99.9"] == 5_000)
        #expect(summary.buckets.map { $0[2] } == [1, 1, 1, 1])
        #expect(summary.buckets.allSatisfy { $0[0] < $0[1] })
    }

    /// The picture: one curve per series, areas (in ⅛ doublings) that add up to 100 % of the samples.
    @Test func thePictureIsAnSVGWithOneCurvePerSeriesWhoseAreaIsAllSamples() {
        let fast = LatencyHistogram((0..<5_000).map { 2_000 + UInt64($0 % 700) })
        let slow = LatencyHistogram((0..<5_000).map { 8_000 + UInt64(($0 * 7) % 9_000) })
        for histogram in [fast, slow] {
            let area = LatencyHistogramPicture.bins(histogram).reduce(0.0) { $0 + $1.density * log2($1.upper / $1.lower) * 8 }
            #expect(abs(area - 100) < 1e-9, "\(area)")
        }
        let svg = LatencyHistogramPicture(title: "a <test>", series: [.init(name: "fast", histogram: fast), .init(name: "slow", histogram: slow)]).svg
        #expect(svg.hasPrefix("<svg xmlns=\"http://www.w3.org/2000/svg\""))
        #expect(svg.hasSuffix("</svg>\n"))
        #expect(svg.ranges(of: "<polyline").count == 2)
        #expect(svg.contains("a &lt;test&gt;"))
        #expect(svg.contains("fast: p50 2.37 µs, p99 2.7 µs, max 2.7 µs, n 5000"), "\(svg)")  // 2,304..<2,368 and 2,688..<2,752 ns buckets, p99 capped at the maximum 2,699
        #expect(!svg.contains("nan") && !svg.contains("inf"))
    }
}
