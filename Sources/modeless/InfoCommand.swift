import ArgumentParser
import ModelessBus
import ModelessCommandLine
import ModelessServices

struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show what a driver writer needs about one device: ids, driver, IOMMU group, BARs, interrupts, capabilities.")

    @Argument(help: "The device: 0000:03:00.0, 03:00.0, or a vendor:device id such as 8086:100e.")
    var device: String

    @Flag(help: "Print JSON for scripts.")
    var json = false

    func run() throws {
        let bus = PCIBus()
        try reportingErrors { () throws(BusError) in
            let found = try bus.resolve(try DeviceSelector(parsing: device))
            if json {
                try printJSON(DeviceJSON(found, bus: bus))
            } else {
                printLine(DeviceDescription(device: found, bus: bus).render())
            }
        }
    }
}

/// The `info` text, laid out like `lspci -vv` but only with what matters to a driver.
struct DeviceDescription {
    let device: PCIDevice
    let bus: PCIBus

    func render() -> String {
        let d = device
        func hex4(_ value: UInt16) -> String { String(value, radix: 16).leftPadded(to: 4) }
        var lines = ["\(d.address) \(d.className ?? "Class") [\(hex4(d.classAndSubclass))]: \(d.displayName) [\(d.ids)] (rev \(String(d.revision, radix: 16).leftPadded(to: 2)))"]
        lines.append("  Subsystem:    \(d.subsystemName ?? "-") [\(hex4(d.subsystemVendorID)):\(hex4(d.subsystemID))]")
        lines.append("  Class code:   \(String(d.classCode, radix: 16).leftPadded(to: 6))")
        lines.append("  Driver:       \(d.driver ?? "none")" + (d.driverOverride.map { " (driver_override: \($0))" } ?? ""))
        if let node = bus.userModeNode(of: d) { lines.append("  User node:    \(node)") }
        let peers = d.iommuGroupPeers.isEmpty ? "alone in its group" : "shared with \(d.iommuGroupPeers.map(\.description).joined(separator: ", "))"
        lines.append("  IOMMU group:  " + (d.iommuGroup.map { "\($0), \(peers)" } ?? "none"))
        lines.append("  NUMA node:    " + (d.numaNode.map(String.init) ?? "-"))
        lines.append("  Kernel use:   " + (d.kernelUses.isEmpty ? "none" : d.kernelUses.map(\.description).joined(separator: "; ")))
        lines.append("  BARs:" + (d.bars.isEmpty ? "         none" : ""))
        lines += d.bars.map { "    \($0.summary)" }
        if d.capabilitiesReadable {
            lines.append("  Interrupts:   \(d.interrupts.summary)")
            if let msix = d.interrupts.msix {
                lines.append("    MSI-X table in BAR\(msix.tableBAR) at 0x\(String(msix.tableOffset, radix: 16)), pending bits in BAR\(msix.pendingBAR) at 0x\(String(msix.pendingOffset, radix: 16))")
            }
            lines.append("  Capabilities:" + (d.capabilities.isEmpty ? " none" : ""))
            lines += d.capabilities.map { "    [\(String($0.offset, radix: 16).leftPadded(to: $0.isExtended ? 3 : 2))] \($0.name)" }
        } else {
            lines.append("  Interrupts:   " + (d.interrupts.intxPinName.map { "INTx (\($0)); " } ?? "")
                         + "MSI and MSI-X unknown: reading the capability list needs root")
        }
        return lines.joined(separator: "\n")
    }
}

