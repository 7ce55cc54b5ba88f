import ArgumentParser
import ModelessRuntime
import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// `--trace-json FILE`: where a run writes its interrupt trace in Chrome's trace-event format.
package enum TraceJSONFile {
    /// Refuses, before anything runs, a FILE given to `option` that could not be written: a
    /// directory, or one whose directory is missing or not writable.
    package static func validate(_ path: String, option: String = "--trace-json") throws {
        guard !path.isEmpty else { throw ValidationError("\(option) needs a file name") }
        var info = stat()
        if stat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR {
            throw ValidationError("\(option) \(path) is a directory; name a file to write the trace to")
        }
        let directory = path.contains("/") ? String(path[..<path.lastIndex(of: "/")!]) : "."
        guard access(directory.isEmpty ? "/" : directory, W_OK) == 0 else {
            throw ValidationError("\(option) \(path): cannot write in \(directory.isEmpty ? "/" : directory) (\(Errno.current)); name a file in a writable directory")
        }
    }

    /// Writes the trace (replacing FILE) and says where it went.
    package static func write(_ trace: InterruptTrace, to path: String) throws {
        do {
            try FileAccess.replaceFile(path, with: Array(trace.chromeTraceJSON(processName: "modeless run").utf8), mode: 0o644)
        } catch {
            printError("cannot write the trace to \(path): \(error)")
            throw ExitCode(1)
        }
        printLine("trace:          \(trace.count) records written to \(path) (Chrome trace-event JSON: open in Perfetto or chrome://tracing)")
    }
}
