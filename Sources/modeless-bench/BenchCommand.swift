import ArgumentParser
import ModelessBus
import ModelessCommandLine
import ModelessDevice
import ModelessMeasurement
import ModelessModels
import ModelessRuntime
import ModelessServices

@main
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: BenchProgramName.current,
        abstract: "Measure the runtime against baselines taken in the same run.",
        subcommands: [BenchInterrupts.self, BenchNVMe.self, BenchE1000.self, BenchLogical.self, BenchFailover.self, BenchDatapath.self,
                      BenchInterruptPath.self, BenchInterruptDatapath.self])

    /// Parses the command line and runs the benchmark, warning first when this is a debug build:
    /// its numbers would measure the unoptimized code, not the drivers.
    static func main() {
        do {
            var command = try parseAsRoot()
            if command is BenchInterrupts || command is any JSONBenchmark { BuildConfiguration.warnIfDebug() }
            if let benchmark = command as? any JSONBenchmark, benchmark.output.json { TextLines.toStandardError.store(true, ordering: .relaxed) }
            try command.run()
        } catch {
            exit(withError: error)
        }
    }
}

/// The name the benchmarks go by: `modeless bench` in their help and errors (people run them
/// through `modeless bench`), and `modeless-bench` in what is generated for this program itself
/// (`--experimental-dump-help`, which the man-page plugin reads, and
/// `--generate-completion-script`): `man modeless-bench` and the shell's completion of
/// `modeless-bench`, which scripts/install installs.
enum BenchProgramName {
    /// The benchmarks' name in this run.
    static let current = generatingForTheProgram(CommandLine.arguments) ? "modeless-bench" : "modeless bench"

    /// Whether `arguments` ask for the man page's or a completion script's input.
    static func generatingForTheProgram(_ arguments: [String]) -> Bool {
        arguments.dropFirst().contains { $0 == "--experimental-dump-help" || $0.hasPrefix("--generate-completion-script") }
    }
}

/// A benchmark with `--json` (``BenchOutputOptions``): its text lines go to standard error when
/// it prints JSON.
protocol JSONBenchmark {
    var output: BenchOutputOptions { get }
}

extension BenchNVMe: JSONBenchmark {}
extension BenchE1000: JSONBenchmark {}
extension BenchLogical: JSONBenchmark {}
extension BenchFailover: JSONBenchmark {}
extension BenchDatapath: JSONBenchmark {}
extension BenchInterruptPath: JSONBenchmark {}
extension BenchInterruptDatapath: JSONBenchmark {}

struct BenchInterrupts: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "interrupts",
        abstract: "Interrupt-to-ISR latency (p50, p99) and sustained rate: eventfd baseline, user mode, kernel emulation.",
        discussion: """
            Without a device, interrupts come from a software source (a device model's MSI vector, \
            one eventfd write each). With a device bound to vfio-pci, they come from VFIO's loopback \
            trigger (VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER) on its first MSI vector, \
            so the kernel's VFIO interrupt path is part of what is measured.
            """)

    @Argument(help: "A device bound to vfio-pci (optional).")
    var device: String?

    @Option(help: "Latency samples per configuration.")
    var samples = 20000

    @Option(help: "Seconds of flooding for the sustained rate.")
    var seconds = 2.0

    @Option(help: "Rounds: the configurations are measured this many times, interleaved, and the median ratio is reported.")
    var rounds = 3

    @Flag(help: "Print the results as JSON, with each path's latency histogram (progress goes to standard error).")
    var json = false

    @Option(name: .customLong("histogram-svg"), help: ArgumentHelp("Write a picture of the latency histograms to FILE (SVG).", valueName: "FILE"))
    var histogramSVG: String?

    func validate() throws {
        guard samples > 0, rounds > 0, seconds > 0 else {
            throw ValidationError("--samples, --rounds and --seconds must be positive (got \(samples), \(rounds), \(seconds))")
        }
        if let histogramSVG { try HistogramPictureFile.validate(histogramSVG) }
    }

    func run() throws {
        let source: () throws -> (device: any DeviceAccess, vector: InterruptVector)
        if let device {
            let address: PCIAddress
            do { address = try PCIBus().resolve(try DeviceSelector(parsing: device)).address } catch { throw ExitStatus.fail(error) }
            source = {
                let access = try VFIODevice(address)
                return (access, try access.enableInterrupts(access.vectorCount(.msix) > 0 ? .msix : .msi, count: 1)[0])
            }
        } else {
            source = {
                let access = try ModeledDevice(InterruptSourceModel())
                return (access, try access.enableInterrupts(.msi, count: 1)[0])
            }
        }
        let benchmark = InterruptBenchmark(samples: samples, rateSeconds: seconds, openSource: source)
        var rows: [[InterruptBenchmark.Result]] = []
        let progress = BenchProgress(toStandardError: json)
        for round in 1...rounds {
            progress.line("round \(round) of \(rounds)…")
            rows.append([try benchmark.baseline(), try benchmark.runtime(.user), try benchmark.runtime(.kernelEmulation)])
        }
        func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
        let report = InterruptBenchReport(rows: rows, samples: samples, seconds: seconds, source: device ?? "software (device model MSI)")
        if let histogramSVG {
            let picture = LatencyHistogramPicture(
                title: "Interrupt to real ISR, \(interruptSourceName(device)): \(rows.count) × \(samples) samples per path (\(BuildConfiguration.name) build)",
                series: report.paths.map { .init(name: $0.name, histogram: $0.histogram) })
            try HistogramPictureFile.write(picture, to: histogramSVG)
            progress.line("histogram picture written to \(histogramSVG)")
        }
        if json {
            printLine(try benchJSON(report))
            return
        }
        printLine("")
        printLine("| path | p50 µs | p99 µs | p50 ÷ baseline | p99 ÷ baseline | ISR calls/s | interrupts/s | calls/s ÷ baseline |")
        printLine("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for column in 0..<3 {
            let results = rows.map { $0[column] }
            let p50 = median(results.map(\.p50)), p99 = median(results.map(\.p99))
            let ratio50 = median(rows.map { $0[column].p50 / $0[0].p50 })
            let ratio99 = median(rows.map { $0[column].p99 / $0[0].p99 })
            let calls = median(results.map(\.handlerCallsPerSecond))
            let interrupts = median(results.map(\.interruptsPerSecond))
            let callRatio = median(rows.map { $0[column].handlerCallsPerSecond / $0[0].handlerCallsPerSecond })
            printLine("| \(results[0].name) | \(fixed(p50, 1)) | \(fixed(p99, 1)) | \(fixed(ratio50, 2)) | \(fixed(ratio99, 2)) | \(Int(calls)) | \(Int(interrupts)) | \(fixed(callRatio, 2)) |")
        }
    }
}

/// The interrupt benchmark's results as `bench interrupts --json` prints them: for each path the
/// medians over the rounds (as the table shows them) and the latency histogram of every sample
/// of every round, in nanoseconds.
struct InterruptBenchReport: Encodable {
    struct Path: Encodable {
        var name: String
        /// Medians over the rounds of each round's exact p50 and p99 (µs), and of their ratios
        /// to the baseline's in the same round.
        var p50Microseconds: Double
        var p99Microseconds: Double
        var p50RatioToBaseline: Double
        var p99RatioToBaseline: Double
        var isrCallsPerSecond: Double
        var interruptsPerSecond: Double
        var callsPerSecondRatioToBaseline: Double
        /// Every round's samples together.
        var latency: LatencySummary
        var histogram: LatencyHistogram

        enum CodingKeys: String, CodingKey {
            case name, p50Microseconds, p99Microseconds, p50RatioToBaseline, p99RatioToBaseline
            case isrCallsPerSecond, interruptsPerSecond, callsPerSecondRatioToBaseline, latency
        }
    }

    var benchmark = "interrupts"
    /// `debug` or `release`: a debug build's numbers are not comparable.
    var build = BuildConfiguration.name
    var source: String
    var samplesPerRound: Int
    var floodSeconds: Double
    var rounds: Int
    var paths: [Path]

    init(rows: [[InterruptBenchmark.Result]], samples: Int, seconds: Double, source: String) {
        func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
        self.source = source
        samplesPerRound = samples
        floodSeconds = seconds
        rounds = rows.count
        paths = rows[0].indices.map { column in
            let results = rows.map { $0[column] }
            var histogram = LatencyHistogram()
            for result in results { histogram.add(result.histogram) }
            return Path(
                name: results[0].name, p50Microseconds: median(results.map(\.p50)), p99Microseconds: median(results.map(\.p99)),
                p50RatioToBaseline: median(rows.map { $0[column].p50 / $0[0].p50 }),
                p99RatioToBaseline: median(rows.map { $0[column].p99 / $0[0].p99 }),
                isrCallsPerSecond: median(results.map(\.handlerCallsPerSecond)),
                interruptsPerSecond: median(results.map(\.interruptsPerSecond)),
                callsPerSecondRatioToBaseline: median(rows.map { $0[column].handlerCallsPerSecond / $0[0].handlerCallsPerSecond }),
                latency: LatencySummary(name: results[0].name, histogram: histogram), histogram: histogram)
        }
    }
}

/// Where the interrupts came from, for a picture's title.
private func interruptSourceName(_ device: String?) -> String { device.map { "VFIO loopback on \($0)" } ?? "software source" }

#if canImport(Glibc)
import Glibc
#endif
