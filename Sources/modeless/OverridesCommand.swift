import ArgumentParser
import ModelessBus
import ModelessCommandLine

struct Overrides: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List, apply or remove persistent overrides (devices bound to a user-mode driver at boot).",
        discussion: """
            `modeless bind DEVICE --persist` records an override; modeless-overrides.service runs \
            `modeless overrides apply` at boot, binding each device with every check of `bind`.
            """,
        subcommands: [OverridesList.self, OverridesApply.self, OverridesRemove.self],
        defaultSubcommand: OverridesList.self)
}

/// Where the overrides live, for every `overrides` subcommand.
struct OverrideLocation: ParsableArguments {
    @Option(help: "The configuration directory whose overrides/ holds persistent overrides (default: $MODELESS_CONFIG_DIR or /etc/modeless).")
    var configDir: String?

    var store: OverrideStore { .standard(configDirectory: configDir) }
}

struct OverridesList: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "The persistent overrides, and whether each device is on its driver now.")

    @OptionGroup var location: OverrideLocation

    @Flag(help: "Print JSON (an array of overrides) for scripts.")
    var json = false

    struct Entry: Encodable {
        var address: String
        var driver: String
        var force: Bool
        /// The device's driver now, or nil when absent or without one.
        var currentDriver: String?
        var present: Bool
        var applied: Bool
    }

    func run() throws {
        try reportingErrors { () throws(BusError) in
            let store = location.store
            let bus = PCIBus()
            let entries = try store.load().sorted { $0.key < $1.key }.map { address, override in
                let device = try? bus.device(at: address)
                return Entry(address: address.description, driver: override.driver.rawValue, force: override.force,
                             currentDriver: device?.driver, present: device != nil,
                             applied: device?.driver == override.driver.rawValue)
            }
            if json { try printJSON(entries); return }
            guard !entries.isEmpty else {
                printLine("No persistent overrides in \(store.directory).")
                return
            }
            printLine("Persistent overrides in \(store.directory):")
            for entry in entries {
                let now = !entry.present ? "device absent" : entry.applied ? "applied" : "now on \(entry.currentDriver ?? "no driver")"
                printLine("  \(entry.address) -> \(entry.driver)\(entry.force ? " (force)" : "")  [\(now)]")
            }
        }
    }
}

struct OverridesApply: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "apply",
        abstract: "Bind every device with a persistent override (what modeless-overrides.service runs at boot).",
        discussion: """
            Each override is applied on its own: an absent or refused device does not keep the others from their drivers. \
            Exits with the first refusal's code if any was refused. With --device, only that device's override is applied \
            and a device without one is left untouched, silently (what the udev rule runs when a PCI device is added).
            """)

    @Argument(help: "Only these devices' overrides (full addresses); default: every one.")
    var addresses: [String] = []

    @Option(help: ArgumentHelp("Apply this device's override if it has one; do nothing and print nothing if it has none (the udev rule's `add` hook).",
                               valueName: "address"))
    var device: String?

    @OptionGroup var location: OverrideLocation

    func validate() throws {
        if device != nil && !addresses.isEmpty {
            throw ValidationError("give either --device or addresses, not both")
        }
    }

    func run() throws {
        try reportingErrors { () throws(BusError) in
            if let device {
                try applyAdded(device)
                return
            }
            var only: [PCIAddress]?
            if !addresses.isEmpty {
                only = []
                for text in addresses {
                    guard let address = PCIAddress(text) else {
                        throw BusError(.malformedAddress, "'\(text)' is not a PCI address",
                                       remedy: "name overrides by address, as `modeless overrides` lists them")
                    }
                    only!.append(address)
                }
            }
            let applied = try PCIBinder().applyOverrides(location.store, only: only)
            if applied.isEmpty { printLine("No persistent overrides in \(location.store.directory).") }
            var firstFailure: BusError?
            for entry in applied {
                switch entry.result {
                case .success(let report):
                    let node = report.node.map { " (\($0))" } ?? ""
                    printLine("\(entry.address): " + (report.alreadyDone ? "already on \(entry.override.driver.rawValue)" : "bound to \(entry.override.driver.rawValue)") + node)
                case .failure(let error):
                    firstFailure = firstFailure ?? error
                    printLine("\(entry.address): not applied: \(error.message)")
                }
            }
            if let firstFailure { throw firstFailure }
        }
    }

    /// `--device`: the override of one device just added, if it has one.
    private func applyAdded(_ text: String) throws(BusError) {
        guard let address = PCIAddress(text) else {
            throw BusError(.malformedAddress, "'\(text)' is not a PCI address",
                           remedy: "give --device a full address such as 0000:03:00.0 (udev's %k)")
        }
        guard let entry = try PCIBinder().applyOverride(ofAdded: address, location.store) else { return }
        switch entry.result {
        case .success(let report):
            let node = report.node.map { " (\($0))" } ?? ""
            printLine("\(address): " + (report.alreadyDone ? "already on \(entry.override.driver.rawValue)" : "bound to \(entry.override.driver.rawValue)") + node)
        case .failure(let error):
            throw error
        }
    }
}

struct OverridesRemove: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remove",
        abstract: "Remove persistent overrides, leaving the devices on the driver they have now (`unbind --persist` also gives them back).")

    @Argument(help: "The devices: full or short addresses, ids, interfaces or block devices.")
    var devices: [String]

    @OptionGroup var location: OverrideLocation

    func run() throws {
        try reportingErrors { () throws(BusError) in
            let store = location.store
            let overrides = try store.load()
            var addresses: [PCIAddress] = []
            for text in devices {
                // An address needs no device: the override of a device taken out of the machine can go too.
                let selector = try DeviceSelector(parsing: text)
                let address: PCIAddress
                if case .address(let named) = selector { address = named } else { address = try PCIBus().resolve(selector).address }
                guard overrides[address] != nil else {
                    let named = text == address.description ? text : "\(text) (\(address))"
                    throw BusError(.noOverride, "\(named) has no persistent override in \(store.directory)",
                                   remedy: "`modeless overrides` lists them")
                }
                addresses.append(address)
            }
            try store.checkWritable()
            for address in addresses {
                try store.set(nil, for: address)
                printLine("\(address): persistent override removed (the device stays on its current driver)")
            }
        }
    }
}
