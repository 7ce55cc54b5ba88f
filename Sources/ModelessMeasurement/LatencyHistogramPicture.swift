/// Draws latency histograms as an SVG picture: latency on a logarithmic axis in microseconds,
/// one outlined step curve per series, and each series' p50 (solid) and p99 (dashed) as
/// vertical lines.
///
/// Buckets are merged four at a time, into bins an eighth to a sixteenth of a doubling wide.
/// On a logarithmic axis a bin's height must be its share of the samples divided by its width,
/// or wide bins would look taller than narrow ones holding the same density: the vertical axis
/// is "% of samples per ⅛ doubling of latency" (a bin exactly ⅛ doubling wide stands as high as
/// its share of the samples). It is logarithmic too, so that the rare slow samples of the tail
/// show beside the peak.
public struct LatencyHistogramPicture {
    /// One curve: its name (for the legend) and its histogram.
    public struct Series {
        /// The series' name in the legend (a benchmark's path or configuration).
        public var name: String
        /// The latencies drawn, in nanoseconds.
        public var histogram: LatencyHistogram
        /// A curve named `name` of `histogram`.
        public init(name: String, histogram: LatencyHistogram) {
            self.name = name
            self.histogram = histogram
        }
    }

    /// The heading drawn above the plot.
    public var title: String
    /// The curves, drawn in this order with the colours cycled.
    public var series: [Series]
    /// The picture's width in SVG user units (pixels at 100 %).
    public var width = 900.0
    /// The picture's height in SVG user units (pixels at 100 %).
    public var height = 480.0

    static let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]

    /// A picture of `series` under `title`.
    public init(title: String, series: [Series]) {
        self.title = title
        self.series = series
    }

    /// One merged bin: its values in nanoseconds and its height (% per doubling).
    struct Bin {
        var lower: Double
        var upper: Double
        var density: Double
    }

    /// The bins of `histogram`, each up to four adjacent buckets of one power of two.
    static func bins(_ histogram: LatencyHistogram) -> [Bin] {
        guard histogram.count > 0 else { return [] }
        var merged: [(key: Int, lower: UInt64, upper: UInt64, count: UInt64)] = []
        for bucket in histogram.buckets {
            let index = LatencyHistogram.bucketIndex(of: bucket.range.lowerBound)
            let key = index < Int(LatencyHistogram.subBuckets) ? index : index - (index - Int(LatencyHistogram.subBuckets)) % 4
            if let last = merged.last, last.key == key {
                merged[merged.count - 1].upper = bucket.range.upperBound
                merged[merged.count - 1].count += bucket.count
            } else {
                // A merged bin spans all four buckets of its group, counted or not.
                let first = LatencyHistogram.bucketRange(key).lowerBound
                let last = key < Int(LatencyHistogram.subBuckets) ? LatencyHistogram.bucketRange(key).upperBound
                    : LatencyHistogram.bucketRange(key + 3).upperBound
                merged.append((key, first, last, bucket.count))
            }
        }
        return merged.map { bin in
            let lower = Double(Swift.max(1, bin.lower)), upper = Double(bin.upper)
            let doublings = log2(upper / lower)
            return Bin(lower: lower, upper: upper, density: 100 * Double(bin.count) / Double(histogram.count) / (doublings * 8))
        }
    }

    /// The picture as an SVG document.
    public var svg: String {
        let left = 80.0, right = 20.0, top = 50.0, bottom = 60.0
        let plotWidth = width - left - right, plotHeight = height - top - bottom
        let allBins = series.map { Self.bins($0.histogram) }
        let lowest = allBins.joined().map(\.lower).min() ?? 1_000
        let highest = allBins.joined().map(\.upper).max() ?? 10_000
        // Decades of microseconds that cover every bin.
        let firstDecade = floor(log10(lowest / 1000)), lastDecade = Swift.max(firstDecade + 1, ceil(log10(highest / 1000)))
        // Decades of density from the rarest bin's to the peak's.
        let densities = allBins.joined().map(\.density)
        let yTopDecade = ceil(log10(densities.max() ?? 100))
        let yBottomDecade = Swift.min(yTopDecade - 1, floor(log10(densities.min() ?? 1)))
        func x(_ nanoseconds: Double) -> Double {
            left + (log10(nanoseconds / 1000) - firstDecade) / (lastDecade - firstDecade) * plotWidth
        }
        func y(_ density: Double) -> Double {
            let decade = density > 0 ? Swift.max(yBottomDecade, log10(density)) : yBottomDecade
            return top + plotHeight - (decade - yBottomDecade) / (yTopDecade - yBottomDecade) * plotHeight
        }

        var out = """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Self.number(width))" height="\(Self.number(height))" \
            viewBox="0 0 \(Self.number(width)) \(Self.number(height))" font-family="sans-serif" font-size="12">
            <rect width="100%" height="100%" fill="white"/>
            <text x="\(Self.number(width / 2))" y="24" text-anchor="middle" font-size="15">\(Self.escaped(title))</text>

            """
        // Grid and axes.
        var decade = firstDecade
        while decade <= lastDecade {
            for step in [1.0, 2.0, 5.0] {
                let micro = pow(10, decade) * step
                guard decade < lastDecade || step == 1 else { continue }
                let position = x(micro * 1000)
                out += "<line x1=\"\(Self.number(position))\" y1=\"\(Self.number(top))\" x2=\"\(Self.number(position))\" y2=\"\(Self.number(top + plotHeight))\" stroke=\"\(step == 1 ? "#ccc" : "#eee")\"/>\n"
                out += "<text x=\"\(Self.number(position))\" y=\"\(Self.number(top + plotHeight + 16))\" text-anchor=\"middle\" fill=\"\(step == 1 ? "#000" : "#777")\">\(Self.micro(micro))</text>\n"
            }
            decade += 1
        }
        var yDecade = yBottomDecade
        while yDecade <= yTopDecade {
            let density = pow(10, yDecade)
            yDecade += 1
            out += "<line x1=\"\(Self.number(left))\" y1=\"\(Self.number(y(density)))\" x2=\"\(Self.number(left + plotWidth))\" y2=\"\(Self.number(y(density)))\" stroke=\"#eee\"/>\n"
            out += "<text x=\"\(Self.number(left - 6))\" y=\"\(Self.number(y(density) + 4))\" text-anchor=\"end\">\(Self.short(density))</text>\n"
        }
        out += "<rect x=\"\(Self.number(left))\" y=\"\(Self.number(top))\" width=\"\(Self.number(plotWidth))\" height=\"\(Self.number(plotHeight))\" fill=\"none\" stroke=\"#000\"/>\n"
        out += "<text x=\"\(Self.number(left + plotWidth / 2))\" y=\"\(Self.number(height - 18))\" text-anchor=\"middle\">latency (µs, logarithmic)</text>\n"
        out += "<text transform=\"translate(18 \(Self.number(top + plotHeight / 2))) rotate(-90)\" text-anchor=\"middle\">% of samples per ⅛ doubling of latency (logarithmic)</text>\n"

        // Curves, percentile lines and the legend (about 6.6 px per character at 12 px).
        let legend = series.map {
            "\($0.name): p50 \(Self.micro(Double($0.histogram.value(atPercentile: 50)) / 1000)) µs, "
                + "p99 \(Self.micro(Double($0.histogram.value(atPercentile: 99)) / 1000)) µs, max \(Self.micro(Double($0.histogram.maximum) / 1000)) µs, "
                + "n \($0.histogram.count)"
        }
        let legendWidth = 28 + 6.6 * Double(legend.map(\.count).max() ?? 0)
        for (number, (series, bins)) in zip(series, allBins).enumerated() {
            let color = Self.colors[number % Self.colors.count]
            var points: [String] = []
            var previousUpper: Double?
            for bin in bins {
                if let previousUpper, previousUpper < bin.lower {
                    points.append("\(Self.number(x(previousUpper))),\(Self.number(y(0)))")
                    points.append("\(Self.number(x(bin.lower))),\(Self.number(y(0)))")
                } else if previousUpper == nil {
                    points.append("\(Self.number(x(bin.lower))),\(Self.number(y(0)))")
                }
                points.append("\(Self.number(x(bin.lower))),\(Self.number(y(bin.density)))")
                points.append("\(Self.number(x(bin.upper))),\(Self.number(y(bin.density)))")
                previousUpper = bin.upper
            }
            if let previousUpper { points.append("\(Self.number(x(previousUpper))),\(Self.number(y(0)))") }
            out += "<polyline points=\"\(points.joined(separator: " "))\" fill=\"\(color)\" fill-opacity=\"0.12\" stroke=\"\(color)\" stroke-width=\"1.5\"/>\n"
            let p50 = Double(series.histogram.value(atPercentile: 50)), p99 = Double(series.histogram.value(atPercentile: 99))
            for (value, dash) in [(p50, ""), (p99, " stroke-dasharray=\"5,4\"")] where value > 0 {
                out += "<line x1=\"\(Self.number(x(value)))\" y1=\"\(Self.number(top))\" x2=\"\(Self.number(x(value)))\" y2=\"\(Self.number(top + plotHeight))\" stroke=\"\(color)\"\(dash)/>\n"
            }
            let legendY = top + 18 + Double(number) * 18
            out += "<rect x=\"\(Self.number(left + plotWidth - legendWidth))\" y=\"\(Self.number(legendY - 10))\" width=\"12\" height=\"12\" fill=\"\(color)\"/>\n"
            out += "<text x=\"\(Self.number(left + plotWidth - legendWidth + 18))\" y=\"\(Self.number(legendY))\">\(Self.escaped(legend[number]))</text>\n"
        }
        out += "</svg>\n"
        return out
    }

    /// A coordinate with at most one decimal.
    static func number(_ value: Double) -> String {
        let tenths = (value * 10).rounded()
        return tenths.truncatingRemainder(dividingBy: 10) == 0 ? String(Int(tenths / 10)) : String(tenths / 10)
    }

    /// Microseconds as a short label: 0.5, 2, 10, 1.25.
    static func micro(_ value: Double) -> String {
        if value >= 100 { return String(Int(value.rounded())) }
        if value > 0 && value < 0.01 { return String(value) }
        let hundredths = (value * 100).rounded() / 100
        return hundredths == hundredths.rounded() ? String(Int(hundredths)) : String(hundredths)
    }

    /// A tick label.
    static func short(_ value: Double) -> String { micro(value) }

    /// `text` for an SVG text node or attribute.
    static func escaped(_ text: String) -> String {
        var result = ""
        for character in text {
            switch character {
            case "&": result += "&amp;"
            case "<": result += "&lt;"
            case ">": result += "&gt;"
            case "\"": result += "&quot;"
            default: result.append(character)
            }
        }
        return result
    }
}

#if canImport(Glibc)
import Glibc
#endif
