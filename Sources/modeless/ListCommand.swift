import ArgumentParser
import FoundationEssentials
import ModelessBus
import ModelessCommandLine
import ModelessDrivers
import ModelessServices

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List PCI devices grouped by kind and by the driver they use.")

    @Flag(help: "Print JSON (an array of devices) for scripts.")
    var json = false

    @Option(name: .customLong("class"), help: "Only devices of a class: net or storage.")
    var deviceClass: DeviceClass?

    func run() throws {
        let bus = PCIBus()
        try reportingErrors { () throws(BusError) in
            let devices: [PCIDevice]
            if let deviceClass { devices = try bus.devices(in: deviceClass) } else { devices = try bus.devices() }
            if json {
                try printJSON(devices.map { DeviceJSON($0, bus: bus) })
            } else {
                printLine(DeviceListing(devices: devices, bus: bus).render())
            }
        }
    }
}

/// Prints any `Encodable` as pretty JSON with sorted keys.
func printJSON<T: Encodable>(_ value: T) throws(BusError) {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    do {
        printLine(String(decoding: try encoder.encode(value), as: UTF8.self))
    } catch {
        throw BusError(.systemFailure, "cannot encode JSON: \(error)", remedy: "")
    }
}

/// The `list` table: devices grouped like `dpdk-devbind.py --status`, first by kind
/// (network, storage, other), then by whether a user-mode driver, a kernel driver or no
/// driver has them.
struct DeviceListing {
    let devices: [PCIDevice]
    let bus: PCIBus

    enum Kind: String, CaseIterable {
        case network = "Network devices"
        case storage = "Storage devices"
        case other = "Other devices"

        init(_ device: PCIDevice) {
            switch device.classCode >> 16 {
            case 0x02: self = .network
            case 0x01: self = .storage
            default: self = .other
            }
        }
    }

    func render() -> String {
        var sections: [String] = []
        for kind in Kind.allCases {
            let members = devices.filter { Kind($0) == kind }
            guard !members.isEmpty else { continue }
            var lines = [kind.rawValue, String(repeating: "=", count: kind.rawValue.count)]
            let groups: [(String, [PCIDevice])] = [
                ("using a user-mode driver", members.filter(\.isBoundForUserMode)),
                ("using a kernel driver", members.filter { $0.driver != nil && !$0.isBoundForUserMode }),
                ("with no driver", members.filter { $0.driver == nil }),
            ]
            for (title, group) in groups where !group.isEmpty {
                lines.append("\(title):")
                lines += group.map { "  " + line(for: $0) }
            }
            sections.append(lines.joined(separator: "\n"))
        }
        return sections.isEmpty ? "No PCI devices found." : sections.joined(separator: "\n\n")
    }

    private func line(for device: PCIDevice) -> String {
        var fields = ["\(device.address) '\(device.deviceName ?? "Device") [\(device.ids)]'"]
        if let driver = device.driver { fields.append("drv=\(driver)") }
        if let override = device.driverOverride, override != device.driver { fields.append("override=\(override)") }
        for use in device.kernelUses {
            if case .networkInterface(let name, _) = use { fields.append("if=\(name)") }
            if case .blockDevice(let name, _, _, _) = use { fields.append("blk=\(name)") }
        }
        if let group = device.iommuGroup { fields.append("iommu_group=\(group)") }
        if let match = DriverRegistry.samples.driver(for: PCIIdentity(device)) { fields.append("match=\(match.driver.name)") }
        if let node = bus.userModeNode(of: device) { fields.append("node=\(node)") }
        if device.isActiveInKernel { fields.append("*Active*") }
        return fields.joined(separator: " ")
    }
}
