import ArgumentParser
import ModelessBus
import ModelessServices

#if canImport(Glibc)
import Glibc
#endif

/// The command line's exit codes are failures already printed.
extension ExitCode: ReportedFailure {}

extension ExitStatus {
    /// Prints the error for a person and exits with its code.
    package static func fail(_ error: BusError) -> ExitCode {
        printError(error.description)
        return ExitCode(code(for: error.kind))
    }
}

/// The console: hosted work's lines on standard output (``printLine(_:)``), its failures on
/// standard error (``printError(_:)``).
extension HostReport {
    /// Lines and failures printed as the command line prints its own.
    package static let console = HostReport(line: { printLine($0) }, error: { printError($0) })
}

/// Runs hosted work, turning the exit status it ended with into the command's exit code.
package func hosting<T>(_ body: () throws -> T) throws -> T {
    do { return try body() } catch let exit as HostExit { throw ExitCode(exit.status) }
}

/// Writes `modeless: error: …` to standard error.
package func printError(_ message: String) {
    var text = "modeless: error: \(message)\n"
    text.withUTF8 { buffer in _ = write(2, buffer.baseAddress, buffer.count) }
}

/// Prints a line and flushes at once, so output piped to another program arrives in time; on
/// standard error instead while ``TextLines/toStandardError`` is set (a benchmark whose standard
/// output carries its JSON).
package func printLine(_ line: String) {
    if TextLines.toStandardError.load(ordering: .relaxed) {
        var text = line + "\n"
        text.withUTF8 { bytes in _ = write(2, bytes.baseAddress, bytes.count) }
        return
    }
    print(line)
    fflush(nil)
}

/// Runs a body that reports ``BusError``, turning it into the documented exit code.
package func reportingErrors(_ body: () throws(BusError) -> Void) throws(ExitCode) {
    do {
        try body()
    } catch {
        throw ExitStatus.fail(error)
    }
}
