import ArgumentParser
import FoundationEssentials
import ModelessMeasurement
import ModelessServices
import ModelessSystem

/// How this program was compiled, for benchmark reports.
package enum BuildConfiguration {
    #if DEBUG
    /// `debug` or `release`.
    package static let name = "debug"
    #else
    package static let name = "release"
    #endif

    /// The warning a benchmark prints first in a debug build (nil in a release build).
    package static var debugWarning: String? {
        guard name == "debug" else { return nil }
        return """
            WARNING: this modeless is a DEBUG build (unoptimized, with assertions): its benchmark \
            numbers are slower than and not comparable with a release build's. \
            Build with `swift build -c release` and run .build/release/modeless bench …
            """
    }

    /// Prints ``debugWarning`` on standard error between two rules of `!` (in bold red on a terminal).
    package static func warnIfDebug() {
        guard let warning = debugWarning else { return }
        let (bold, plain) = isatty(2) == 1 ? ("\u{1B}[1;31m", "\u{1B}[0m") : ("", "")
        let rule = String(repeating: "!", count: 78)
        var text = "\n\(rule)\n\(bold)\(warning)\(plain)\n\(rule)\n\n"
        text.withUTF8 { bytes in _ = write(2, bytes.baseAddress, bytes.count) }
    }
}

/// Where a benchmark writes its progress: standard output, or standard error when standard
/// output carries its JSON.
package struct BenchProgress {
    var toStandardError: Bool

    /// Progress on standard error when `toStandardError`, else on standard output.
    package init(toStandardError: Bool) { self.toStandardError = toStandardError }

    /// Writes one line.
    package func line(_ text: String) {
        if toStandardError {
            var text = text + "\n"
            text.withUTF8 { bytes in _ = write(2, bytes.baseAddress, bytes.count) }
        } else {
            printLine(text)
        }
    }
}

/// Writes a latency histogram picture, refusing a FILE that could not be written before
/// anything runs (``validate(_:option:)``).
package enum HistogramPictureFile {
    /// Refuses (exit status 64) a FILE in a directory that does not exist or cannot be written.
    package static func validate(_ path: String, option: String = "--histogram-svg") throws {
        try TraceJSONFile.validate(path, option: option)
    }

    /// Writes `picture` as SVG to `path`, replacing it; exit status 1 if it cannot.
    package static func write(_ picture: LatencyHistogramPicture, to path: String) throws {
        do { try FileAccess.replaceFile(path, with: Array(picture.svg.utf8), mode: 0o644) } catch {
            printError("cannot write the histogram picture to \(path): \(error)")
            throw ExitCode(1)
        }
    }
}

/// `--histogram-svg FILE`, which every benchmark that times single operations takes: a picture
/// of their latency histograms, one curve per measurement (``LatencyHistogramPicture``).
package struct HistogramPictureOption: ParsableArguments {
    @Option(name: .customLong("histogram-svg"), help: ArgumentHelp("Write a picture of the latency histograms to FILE (SVG).", valueName: "FILE"))
    package var histogramSVG: String?

    /// No --histogram-svg.
    package init() {}

    /// Refuses, before anything is measured, a FILE that could not be written.
    package func validate() throws {
        if let histogramSVG { try HistogramPictureFile.validate(histogramSVG) }
    }

    /// With --histogram-svg, writes the picture of the histograms of `results` under `title`
    /// (followed by the build) and says so on `text`; exit status 1 if it cannot, or when no
    /// measurement has a histogram.
    package func write(_ results: BenchResults, title: String, text: BenchProgress) throws {
        guard let histogramSVG else { return }
        guard !results.histograms.isEmpty else {
            printError("no measurement of this run timed single operations: no histogram picture written to \(histogramSVG)")
            throw ExitCode(1)
        }
        try HistogramPictureFile.write(LatencyHistogramPicture(title: "\(title) (\(results.build) build)", series: results.histograms), to: histogramSVG)
        text.line("histogram picture written to \(histogramSVG)")
    }
}

/// Encodes a benchmark report as pretty JSON with sorted keys.
package func benchJSON<T: Encodable>(_ value: T) throws -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    return String(decoding: try encoder.encode(value), as: UTF8.self)
}

#if canImport(Glibc)
import Glibc
#endif
