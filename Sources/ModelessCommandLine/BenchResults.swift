import ArgumentParser
import ModelessMeasurement
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// `--json`, which every benchmark takes: its results as one JSON object on standard output,
/// with the table and the progress lines on standard error.
package struct BenchOutputOptions: ParsableArguments {
    @Flag(help: "Print the results as JSON, with latency histograms where the benchmark measures latency (the table and progress go to standard error).")
    package var json = false

    /// No --json.
    package init() {}

    /// Where the benchmark's text lines go: standard output, or standard error with --json.
    package var text: BenchProgress { BenchProgress(toStandardError: json) }

    /// Prints `results` as JSON on standard output when --json was given.
    package func finish(_ results: BenchResults) throws {
        guard json else { return }
        print(try benchJSON(results))
        fflush(nil)
    }
}

/// Where ``printLine(_:)`` writes: a benchmark run with `--json` sets ``toStandardError`` before
/// it starts, so that its table and progress lines (``ProgressLine`` too) leave standard output
/// to the JSON.
package enum TextLines {
    /// Set: text lines go to standard error.
    package static let toStandardError = Atomic<Bool>(false)
}

/// A benchmark's results as `--json` prints them: which benchmark ran, in which build, with
/// which options, and one entry per configuration it measured (a row of its table).
package struct BenchResults: Encodable {
    /// One configuration measured.
    package struct Measurement: Encodable {
        /// The configuration, as the table's row names it.
        package var name: String
        /// Its numbers, each named with its unit (`readsPerSecond`, `nanosecondsPerRequest`).
        package var values: [String: Double]
        /// Where the benchmark times each operation on its own: their latencies, in
        /// nanoseconds (``LatencySummary``: percentiles and buckets).
        package var latency: LatencySummary?
    }

    /// The benchmark: `nvme`, `e1000`, `logical`, `failover`, `datapath`, `interrupt-path`,
    /// `interrupt-datapath`.
    package var benchmark: String
    /// `debug` or `release`: a debug build's numbers are not comparable.
    package var build = BuildConfiguration.name
    /// The options the benchmark ran with, by their long names.
    package var parameters: [String: String]
    /// What was measured, in the order of the table.
    package var measurements: [Measurement] = []
    /// The latency histograms of the measurements that have one, by name, for
    /// `--histogram-svg`'s picture (the JSON has their summaries).
    package private(set) var histograms: [LatencyHistogramPicture.Series] = []

    private enum CodingKeys: String, CodingKey {
        case benchmark, build, parameters, measurements
    }

    /// Results of `benchmark` run with `parameters`, in this build.
    package init(benchmark: String, parameters: [String: String]) {
        self.benchmark = benchmark
        self.parameters = parameters
    }

    /// Adds the measurement of configuration `name`.
    package mutating func add(_ name: String, _ values: [String: Double], latency: LatencyHistogram? = nil) {
        measurements.append(Measurement(name: name, values: values, latency: latency.map { LatencySummary(name: name, histogram: $0) }))
        if let latency { histograms.append(.init(name: name, histogram: latency)) }
    }
}
