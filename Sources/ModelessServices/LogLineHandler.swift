import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Writes each log record as one line on standard output, flushed at once:
///
///     2026-11-30T11:42:29.123Z notice [svc-1] died (killed by SIGKILL); restarting
///
/// The time is UTC to the millisecond, then the level, the record's `instance` (else `service`,
/// else `container`) metadata in brackets when it has one, the message, and any other metadata
/// as `key=value`.
/// The libraries take a `Logger`; the command line makes theirs with ``CommandLogging/logger(_:)``.
struct LogLineHandler: LogHandler {
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level

    /// One line at a time from every thread.
    private static let output = Mutex(())

    init(level: Logger.Level) { logLevel = level }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let text = Self.line(time: Self.now(), level: event.level, message: "\(event.message)",
                             metadata: metadata.merging(event.metadata ?? [:]) { $1 })
        Self.output.withLock { _ in
            print(text)
            fflush(nil)
        }
    }

    /// The line for one record (without its newline).
    static func line(time: String, level: Logger.Level, message: String, metadata: Logger.Metadata) -> String {
        var metadata = metadata
        // What the record is about: an instance, else its service (both in every supervisor
        // record), else a container.
        let instance = metadata.removeValue(forKey: "instance"), service = metadata.removeValue(forKey: "service")
        let subject = instance ?? service ?? metadata.removeValue(forKey: "container")
        var line = "\(time) \(level)"
        if let subject { line += " [\(subject)]" }
        line += " " + message
        for key in metadata.keys.sorted() { line += " \(key)=\(metadata[key]!)" }
        return line
    }

    /// Now, as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
    static func now() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var parts = tm()
        var seconds = now.tv_sec
        gmtime_r(&seconds, &parts)
        func padded(_ value: Int, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return "\(padded(Int(parts.tm_year) + 1900, 4))-\(padded(Int(parts.tm_mon) + 1, 2))-\(padded(Int(parts.tm_mday), 2))"
            + "T\(padded(Int(parts.tm_hour), 2)):\(padded(Int(parts.tm_min), 2)):\(padded(Int(parts.tm_sec), 2))"
            + ".\(padded(now.tv_nsec / 1_000_000, 3))Z"
    }
}

/// How the command line logs: through ``LogLineHandler`` on standard output, at the level in
/// `MODELESS_LOG_LEVEL` (trace, debug, info, notice, warning, error or critical; info when unset).
/// The one place the command line sets logging up; no process-wide bootstrap.
package enum CommandLogging {
    /// The environment variable that sets the level.
    static let levelVariable = "MODELESS_LOG_LEVEL"

    /// The level `MODELESS_LOG_LEVEL` asks for, or info. An unknown value is an error naming the levels.
    static func level() throws -> Logger.Level {
        guard let value = getenv(levelVariable).map({ String(cString: $0) }), !value.isEmpty else { return .info }
        guard let level = Logger.Level(rawValue: value.lowercased()) else {
            throw LoggingSetupError(
                "\(levelVariable)=\(value) is not a log level; use one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return level
    }

    /// A logger labelled `label` that writes lines on standard output at the configured level.
    package static func logger(_ label: String) throws -> Logger {
        let level = try level()
        return Logger(label: label, factory: { _ in LogLineHandler(level: level) })
    }
}

/// `MODELESS_LOG_LEVEL` names no level.
package struct LoggingSetupError: Error, CustomStringConvertible {
    /// What was wrong, naming the variable and the levels.
    package var description: String
    init(_ description: String) { self.description = description }
}
