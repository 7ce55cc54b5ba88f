/// The drivers a program knows and how it picks one for a device: the narrowest matching
/// entry across all tables wins, ties going to the driver listed first.
public struct DriverRegistry: Sendable {
    /// The drivers known, in the order that breaks ties between equally narrow matches.
    public let drivers: [DriverIdentity]

    /// A registry of `drivers`.
    /// - Precondition: the names are unique, so that ``driver(named:)`` finds one.
    public init(_ drivers: [DriverIdentity]) {
        precondition(Set(drivers.map(\.name)).count == drivers.count, "driver names must be unique")
        self.drivers = drivers
    }

    /// The sample drivers: edu, e1000 and NVMe.
    public static let samples = DriverRegistry([.edu, .e1000, .nvme])

    /// The driver called `name` (`edu`, `e1000`, `nvme`), or nil if the registry has none.
    public func driver(named name: String) -> DriverIdentity? {
        drivers.first { $0.name == name }
    }

    /// The driver that takes `identity`, and the entry that matched; nil if none does.
    public func driver(for identity: PCIIdentity) -> (driver: DriverIdentity, entry: PCIMatch)? {
        var best: (driver: DriverIdentity, entry: PCIMatch)?
        for driver in drivers {
            guard let entry = driver.match(identity) else { continue }
            if best == nil || entry.specificity > best!.entry.specificity { best = (driver, entry) }
        }
        return best
    }

    /// Why `driver` must not be offered the function at `address` with `identity`, or nil if
    /// its table takes it: names the ids the driver supports, the device's, and the driver
    /// that would take it.
    public func refusal(of driver: DriverIdentity, at address: String, _ identity: PCIIdentity) -> DriverMismatch? {
        guard driver.match(identity) == nil else { return nil }
        return DriverMismatch(driver: driver, address: address, identity: identity, instead: self.driver(for: identity)?.driver)
    }
}

/// A driver offered a device outside its match table.
public struct DriverMismatch: Error, Sendable, CustomStringConvertible {
    /// The driver asked for.
    public let driver: DriverIdentity
    /// The function's address, as the caller named it.
    public let address: String
    /// The function's ids, as read from its configuration header.
    public let identity: PCIIdentity
    /// The driver whose table takes the device, if any.
    public let instead: DriverIdentity?

    /// What the driver supports and what the device is; ``remedy`` says which driver to use.
    public var description: String {
        "the \(driver.name) driver does not support \(address) \(identity): it supports \(driver.supportedIDs)"
    }

    /// What to do instead.
    public var remedy: String {
        if let instead { return "the \(instead.name) driver takes this device: modeless run \(instead.name) \(address) (or modeless run \(address))" }
        return "no sample driver takes this device; `modeless drivers` lists the ids each supports"
    }
}
