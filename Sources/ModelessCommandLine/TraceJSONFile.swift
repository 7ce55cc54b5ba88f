import ArgumentParser
import ModelessServices
import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// `--trace-json FILE`: where a run writes its interrupt trace in Chrome's trace-event format
/// (``ModelessServices/HostedWork/writeTrace(_:to:)`` writes it).
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
}
