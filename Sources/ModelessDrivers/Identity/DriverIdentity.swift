/// Which devices a driver takes: its name and its match table, as Linux's `pci_device_id`
/// table, a KMDF INF's hardware ids, or a Fuchsia driver's bind rules declare it. The framework
/// matches tables against a device's ids before a driver starts; the driver's own start then
/// probes the device's registers (a signature register, a version) before it trusts them.
public struct DriverIdentity: Sendable, Hashable, CustomStringConvertible {
    /// The name `modeless run NAME` takes.
    public let name: String
    /// What the driver drives, in a few words.
    public let summary: String
    /// The table: the driver takes a function that matches any entry.
    public let matches: [PCIMatch]

    /// A driver called `name` (the word `modeless run` takes) taking the functions that match any
    /// of `matches`.
    /// - Precondition: `matches` is not empty: a driver that takes nothing cannot be offered a device.
    public init(name: String, summary: String, matches: [PCIMatch]) {
        precondition(!matches.isEmpty, "a driver's match table needs at least one entry")
        self.name = name
        self.summary = summary
        self.matches = matches
    }

    /// The narrowest entry that `identity` matches, or nil if the driver does not take it.
    public func match(_ identity: PCIIdentity) -> PCIMatch? {
        matches.filter { $0.matches(identity) }.max { $0.specificity < $1.specificity }
    }

    /// The entries, for messages: `1234:11e8` or `class 010802 (NVM Express), 1b36:0010`.
    public var supportedIDs: String {
        matches.map { entry in entry.name.map { "\(entry) (\($0))" } ?? entry.description }.joined(separator: ", ")
    }

    /// The name with the ids it supports, e.g. `edu (1234:11e8 (QEMU edu))`.
    public var description: String { "\(name) (\(supportedIDs))" }
}
