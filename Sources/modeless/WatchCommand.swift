import ArgumentParser
import ModelessBus
import ModelessCommandLine

extension UdevMonitor.Source: ExpressibleByArgument {}

struct Watch: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print PCI events as they happen: add, remove, bind, unbind.")

    @Option(help: "Where events come from: udev (after udev rules ran) or kernel (where no udev daemon runs). Default: udev if it is running.")
    var source: UdevMonitor.Source?

    @Option(help: "Stop after this many events.")
    var count: Int?

    @Option(help: "Stop after this many seconds.")
    var timeout: Double?

    func run() throws {
        try reportingErrors { () throws(BusError) in
            let monitor = try UdevMonitor(source: source ?? .automatic)
            printLine("watching \(monitor.source.rawValue) events for PCI devices")
            let deadline = timeout.map { ContinuousClock.now + .milliseconds(Int($0 * 1000)) }
            var seen = 0
            while count.map({ seen < $0 }) ?? true {
                var wait: Int32 = -1
                if let deadline {
                    let left = ContinuousClock.now.duration(to: deadline)
                    if left <= .zero { break }
                    wait = Int32(left.wholeNanoseconds / 1_000_000) + 1
                }
                do {
                    if let event = try monitor.next(timeoutMilliseconds: wait) {
                        printLine(event.description)
                        seen += 1
                    }
                } catch {
                    throw BusError(.systemFailure, "\(error)", remedy: "")
                }
            }
        }
    }
}
