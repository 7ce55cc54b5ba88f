import ArgumentParser
import ModelessBus
import ModelessCommandLine
import ModelessDrivers
import ModelessServices

struct Drivers: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the sample drivers and the devices their match tables take.")

    @Flag(help: "Print JSON (an array of drivers with their tables) for scripts.")
    var json = false

    func run() throws {
        let drivers = DriverRegistry.samples.drivers
        if json {
            try reportingErrors { () throws(BusError) in try printJSON(drivers.map(DriverJSON.init)) }
            return
        }
        let width = drivers.map(\.name.count).max() ?? 0
        for driver in drivers {
            printLine(driver.name.padding(width) + "  " + driver.summary)
            for entry in driver.matches {
                printLine(String(repeating: " ", count: width + 4) + entry.description + (entry.name.map { "  \($0)" } ?? ""))
            }
        }
    }
}

/// A driver as `drivers --json` prints it: ids as lower-case hex strings; a field that
/// matches any value is absent.
struct DriverJSON: Encodable {
    struct Entry: Encodable {
        var vendorId: String?
        var deviceId: String?
        var subsystemVendorId: String?
        var subsystemDeviceId: String?
        var classCode: String?
        var classMask: String?
        var name: String?
    }

    var name: String
    var summary: String
    var matches: [Entry]

    init(_ driver: DriverIdentity) {
        func hex<Value: BinaryInteger>(_ value: Value, _ width: Int) -> String { String(value, radix: 16).leftPadded(to: width) }
        name = driver.name
        summary = driver.summary
        matches = driver.matches.map { entry in
            Entry(vendorId: entry.vendor.map { hex($0, 4) }, deviceId: entry.device.map { hex($0, 4) },
                  subsystemVendorId: entry.subsystemVendor.map { hex($0, 4) },
                  subsystemDeviceId: entry.subsystemDevice.map { hex($0, 4) },
                  classCode: entry.classMask == 0 ? nil : hex(entry.classCode, 6),
                  classMask: entry.classMask == 0 ? nil : hex(entry.classMask, 6), name: entry.name)
        }
    }
}

