import ModelessSystem

/// Progress of long work as lines (`verify: written 96 of 256 MiB (37 %), 12 s`), at most one
/// every `interval` seconds, handed to `report`: work that ends sooner reports none.
package final class ProgressLine {
    let what: String
    let total: Int
    let unit: String
    let interval: Double
    let report: (String) -> Void
    private let start = monotonicNanoseconds()
    private var nextLine: UInt64

    /// Progress of `what` over `total` `unit`s, each line given to `report`.
    package init(_ what: String, total: Int, unit: String, interval: Double = 5, report: @escaping (String) -> Void) {
        self.report = report
        self.what = what
        self.total = total
        self.unit = unit
        self.interval = interval
        nextLine = start + UInt64(interval * 1e9)
    }

    /// Notes that `done` of the total are done; reports a line if the interval has passed.
    package func update(_ done: Int) {
        let now = monotonicNanoseconds()
        guard now >= nextLine else { return }
        nextLine = now + UInt64(interval * 1e9)
        report(Self.line(what, done: done, total: total, unit: unit, seconds: Double(now - start) / 1e9))
    }

    /// The text of one progress line.
    package static func line(_ what: String, done: Int, total: Int, unit: String, seconds: Double) -> String {
        let percent = total > 0 ? done * 100 / total : 100
        return "\(what) \(done) of \(total) \(unit) (\(percent) %), \(Int(seconds)) s"
    }
}
