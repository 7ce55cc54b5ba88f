import ModelessSystem

/// When an instance that died is started again, and when it is given up on: systemd's
/// `StartLimitBurst`/`StartLimitIntervalSec` and restart back-off, for one instance.
///
/// - **Start limit.** At most `startLimitBurst` starts within any `startLimitIntervalSeconds`;
///   a start beyond that is not made and the instance is `failed`.
/// - **Failed starts in a row.** An instance that dies or hits its start timeout before it
///   serves, `startAttempts` times in a row, is `failed`.
/// - **Back-off.** A run that ended before it served, or within `startLimitIntervalSeconds` of
///   its start, is a quick death, serving or not. The first quick death in a row restarts after
///   `restartDelaySeconds`; each further one doubles the delay, from at least 0.1 s, up to
///   `restartMaxDelaySeconds`. A run that lasted longer resets the count.
struct RestartPolicy {
    let configuration: SupervisorConfiguration
    /// When the recent starts were made (monotonic nanoseconds), oldest first.
    private(set) var starts: [UInt64] = []
    private(set) var quickDeathsInARow = 0
    private(set) var failedStartsInARow = 0

    init(_ configuration: SupervisorConfiguration) { self.configuration = configuration }

    /// Why no start may be made at `now`, or nil if one may.
    func refusal(at now: UInt64) -> String? {
        if failedStartsInARow >= configuration.startAttempts {
            return "\(failedStartsInARow) failed starts in a row (startAttempts \(configuration.startAttempts))"
        }
        guard configuration.startLimitBurst > 0, configuration.startLimitIntervalSeconds > 0 else { return nil }
        let window = UInt64(configuration.startLimitIntervalSeconds * 1e9)
        let recent = starts.filter { now < window || $0 > now - window }
        guard recent.count >= configuration.startLimitBurst else { return nil }
        return "start limit hit: \(recent.count) starts within \(Self.seconds(configuration.startLimitIntervalSeconds)) s (startLimitBurst \(configuration.startLimitBurst), startLimitIntervalSeconds \(Self.seconds(configuration.startLimitIntervalSeconds)))"
    }

    /// Counts a start made at `now`.
    mutating func started(at now: UInt64) {
        let window = UInt64(max(configuration.startLimitIntervalSeconds, 0) * 1e9)
        starts.removeAll { now >= window && $0 <= now - window }
        starts.append(now)
    }

    /// Counts the end of a run that started at `start` and ended at `now`, having served or
    /// not; returns the delay before the next start.
    mutating func ended(startedAt start: UInt64, at now: UInt64, served: Bool) -> Double {
        failedStartsInARow = served ? 0 : failedStartsInARow + 1
        let lasted = Double(now &- start) / 1e9
        let quick = !served || lasted < configuration.startLimitIntervalSeconds
        quickDeathsInARow = quick ? quickDeathsInARow + 1 : 0
        guard quickDeathsInARow > 1 else { return configuration.restartDelaySeconds }
        let step = max(configuration.restartDelaySeconds, 0.1)
        let doubled = step * Double(1 << min(quickDeathsInARow - 2, 20))
        return max(configuration.restartDelaySeconds, min(doubled, configuration.restartMaxDelaySeconds))
    }

    /// Counts a start that could not be made at all (the program could not be run).
    mutating func couldNotStart() { failedStartsInARow += 1 }

    /// The instance's device came back after a removal: the starts and deaths before it say
    /// nothing about the device now there, so the limits count afresh.
    mutating func deviceReturned() {
        starts.removeAll()
        quickDeathsInARow = 0
        failedStartsInARow = 0
    }

    static func seconds(_ value: Double) -> String {
        value == value.rounded() ? String(Int(value)) : String(value)
    }
}
