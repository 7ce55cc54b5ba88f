import ArgumentParser
import ModelessBus
import ModelessCommandLine
import ModelessServices

extension UserModeDriver: ExpressibleByArgument {}
extension DeviceClass: ExpressibleByArgument {}

/// The options `bind` and `unbind` share: which functions, and where persistent overrides live.
struct DeviceSelection: ParsableArguments {
    @Argument(help: "The devices: 0000:03:00.0, 03:00.0, a vendor:device id such as 8086:100e, an interface (eth1) or a block device (nvme1n1).")
    var devices: [String] = []

    @Option(name: .customLong("class"), help: "Every device of a class as well: net or storage.")
    var deviceClass: DeviceClass?

    @Option(help: "The configuration directory whose overrides/ holds persistent overrides (default: $MODELESS_CONFIG_DIR or /etc/modeless).")
    var configDir: String?

    func validate() throws {
        if devices.isEmpty && deviceClass == nil {
            throw ValidationError("name at least one device, or a class with --class net|storage")
        }
    }

    /// The selectors named, then the class's functions that `include` keeps.
    func selectors(bus: PCIBus, including include: (PCIDevice) -> Bool, noneIncluded: String)
        throws(BusError) -> [DeviceSelector] {
        var selectors: [DeviceSelector] = []
        for text in devices { selectors.append(try DeviceSelector(parsing: text)) }
        if let deviceClass {
            let members = try bus.devices(in: deviceClass).filter(include)
            guard !members.isEmpty else {
                throw BusError(.noSuchDevice, "no \(deviceClass.plural) \(noneIncluded)",
                               remedy: "`modeless list --class \(deviceClass.rawValue)` shows them and their drivers")
            }
            selectors += members.map { .address($0.address) }
        }
        return selectors
    }
}

struct Bind: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Hand devices to a user-mode driver (vfio-pci or uio_pci_generic).",
        discussion: """
            Every device named is checked before any changes; if one is refused, none is bound. \
            If the kernel refuses one, those already bound are given back. The original driver is \
            remembered for `modeless unbind`. With --persist, the binding is also recorded as a \
            persistent override that modeless-overrides.service applies at every boot.
            """)

    @OptionGroup var selection: DeviceSelection

    @Option(help: "The user-mode driver: vfio-pci (IOMMU-isolated) or uio_pci_generic (no DMA isolation).")
    var to: UserModeDriver = .vfioPCI

    @Flag(help: "Bind even infrastructure, a device the kernel is using (interface up, disk mounted) or one holding data.")
    var force = false

    @Flag(help: "Also bind the devices at every boot (a persistent override under /etc/modeless/overrides).")
    var persist = false

    @Flag(help: "Check and print what would be done, changing nothing.")
    var dryRun = false

    func run() throws {
        let binder = PCIBinder()
        let store = persist ? OverrideStore.standard(configDirectory: selection.configDir) : nil
        try reportingBatch(dryRun: dryRun) { () throws(BatchError) in
            let selectors: [DeviceSelector]
            do throws(BusError) {
                selectors = try selection.selectors(bus: binder.bus, including: { _ in true }, noneIncluded: "")
            } catch { throw BatchError(failure: error, outcomes: []) }
            let outcomes = try binder.bind(all: selectors, to: to, force: force, dryRun: dryRun, persist: store)
            return (outcomes, store.map { "persistent override in \($0.directory)" })
        }
    }
}

struct Unbind: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Give devices back to the driver they had before `modeless bind`.",
        discussion: """
            Every device named is checked before any changes; if one is refused, none is given back. \
            With --persist, its persistent override is removed too, so it stays with its kernel \
            driver after a reboot.
            """)

    @OptionGroup var selection: DeviceSelection

    @Flag(help: "Also remove the devices' persistent overrides.")
    var persist = false

    @Flag(help: "Check and print what would be done, changing nothing.")
    var dryRun = false

    @Flag(help: "If a Modeless driver holds the device through VFIO, ask it to release it (its remove routine fails its I/O and closes the device) and unbind once it has; without this, a held device is refused.")
    var release = false

    func run() throws {
        let binder = PCIBinder()
        let store = persist ? OverrideStore.standard(configDirectory: selection.configDir) : nil
        try reportingBatch(dryRun: dryRun) { () throws(BatchError) in
            let selectors: [DeviceSelector]
            do throws(BusError) {
                let overrides = try store?.load() ?? [:]
                let records = try binder.store.load()
                selectors = try selection.selectors(
                    bus: binder.bus,
                    including: { $0.isBoundForUserMode || records[$0.address] != nil || overrides[$0.address] != nil },
                    noneIncluded: "on a user-mode driver" + (store == nil ? "" : " or with a persistent override"))
            } catch { throw BatchError(failure: error, outcomes: []) }
            let outcomes = try binder.unbind(all: selectors, releasing: release, dryRun: dryRun, persist: store)
            return (outcomes, store.map { "persistent override removed from \($0.directory)" })
        }
    }
}

/// Runs a bind or unbind of several devices and prints one line per device; a refusal prints
/// every device's outcome, then the first failure, and exits with its code.
private func reportingBatch(dryRun: Bool, _ body: () throws(BatchError) -> ([DeviceOutcome], String?)) throws(ExitCode) {
    do {
        let (outcomes, persisted) = try body()
        for outcome in outcomes { printOutcome(outcome, dryRun: dryRun, persisted: persisted) }
    } catch {
        if error.outcomes.count > 1 {
            for outcome in error.outcomes { printOutcome(outcome, dryRun: dryRun, persisted: nil) }
            let refused = error.outcomes.filter { if case .refused = $0.state { true } else { false } }.count
            let undone = error.outcomes.contains { if case .undone = $0.state { true } else { false } }
            printError("\(refused) of \(error.outcomes.count) devices refused; "
                       + (undone ? "those already changed were put back" : "nothing was changed"))
        }
        throw ExitStatus.fail(error.failure)
    }
}

private func printOutcome(_ outcome: DeviceOutcome, dryRun: Bool, persisted: String?) {
    func label(_ address: PCIAddress) -> String {
        outcome.name == address.description ? address.description : "\(address) (\(outcome.name))"
    }
    switch outcome.state {
    case .done(let report):
        let address = label(report.device.address)
        let driver = report.device.driver ?? "no driver"
        let node = report.node.map { " (\($0))" } ?? ""
        let suffix = dryRun ? "" : persisted.map { "; \($0)" } ?? ""
        if report.alreadyDone {
            printLine("\(address): nothing to do, already on \(driver)\(node)\(suffix)")
        } else if dryRun {
            printLine("\(address): would do:")
            report.steps.forEach { printLine("  \($0)") }
        } else {
            let verb = report.device.isBoundForUserMode ? "bound to" : "restored to"
            printLine("\(address): \(verb) \(driver)\(node)\(suffix)")
        }
    case .refused(let error):
        printLine("\(outcome.name): refused: \(error.message)")
    case .unchanged(let device):
        printLine("\(label(device.address)): checked, left as it was (driver: \(device.driver ?? "none"))")
    case .undone(let device):
        printLine("\(label(device.address)): changed, then put back as it was (driver: \(device.driver ?? "none"))")
    case .notUndone(let device, let error):
        printLine("\(label(device.address)): changed, and putting it back failed: \(error.message)")
    case .overrideRemoved(let address):
        printLine("\(label(address)): not on a user-mode driver; " + (dryRun ? "would remove its persistent override" : "persistent override removed"))
    }
}
