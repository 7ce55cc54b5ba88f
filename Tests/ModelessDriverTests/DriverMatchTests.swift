import ModelessDrivers
import Testing

@Suite("Driver match tables")
struct DriverMatchTests {
    /// Ids → the sample driver that takes them (nil: none does).
    @Test(arguments: [
        (PCIIdentity(vendor: 0x1234, device: 0x11e8, subsystemVendor: 0x1af4, subsystemDevice: 0x1100, classCode: 0x00ff00), "edu"),
        (PCIIdentity(vendor: 0x8086, device: 0x100e, subsystemVendor: 0x1af4, subsystemDevice: 0x1100, classCode: 0x020000), "e1000"),
        (PCIIdentity(vendor: 0x1b36, device: 0x0010, subsystemVendor: 0x1af4, subsystemDevice: 0x1100, classCode: 0x010802), "nvme"),
        // Any vendor's NVM Express controller, by class.
        (PCIIdentity(vendor: 0x144d, device: 0xa808, classCode: 0x010802), "nvme"),
        // An AHCI controller is mass storage but not NVM Express; an NVMe-class subclass with
        // another interface (0x010801, NVMHCI) is not either.
        (PCIIdentity(vendor: 0x8086, device: 0x2922, classCode: 0x010601), nil),
        (PCIIdentity(vendor: 0x8086, device: 0x0953, classCode: 0x010801), nil),
        // The 82574L (e1000e) is in the e1000 table; the 82599 (ixgbe) is in none.
        (PCIIdentity(vendor: 0x8086, device: 0x10d3, classCode: 0x020000), "e1000"),
        (PCIIdentity(vendor: 0x8086, device: 0x10fb, classCode: 0x020000), nil),
        (PCIIdentity(vendor: 0x1af4, device: 0x1041, classCode: 0x020000), nil),
        // QEMU's NVMe id with another class still matches its own entry.
        (PCIIdentity(vendor: 0x1b36, device: 0x0010, classCode: 0x018000), "nvme"),
    ] as [(PCIIdentity, String?)])
    func theSampleRegistryPicks(_ identity: PCIIdentity, _ expected: String?) {
        #expect(DriverRegistry.samples.driver(for: identity)?.driver.name == expected, "\(identity)")
    }

    @Test func subsystemEntriesMatchOnlyTheirSubsystem() {
        let entry = PCIMatch(vendor: 0x8086, device: 0x100e, subsystemVendor: 0x8086, subsystemDevice: 0x001e)
        #expect(entry.matches(PCIIdentity(vendor: 0x8086, device: 0x100e, subsystemVendor: 0x8086, subsystemDevice: 0x001e)))
        #expect(!entry.matches(PCIIdentity(vendor: 0x8086, device: 0x100e, subsystemVendor: 0x8086, subsystemDevice: 0x001f)))
        #expect(!entry.matches(PCIIdentity(vendor: 0x8086, device: 0x100e, subsystemVendor: 0x1af4, subsystemDevice: 0x001e)))
        let anySubdevice = PCIMatch(vendor: 0x8086, device: 0x100e, subsystemVendor: 0x8086)
        #expect(anySubdevice.matches(PCIIdentity(vendor: 0x8086, device: 0x100e, subsystemVendor: 0x8086, subsystemDevice: 0x1234)))
        #expect(entry.description == "8086:100e subsystem 8086:001e")
    }

    @Test func classMasksCompareOnlyTheirBits() {
        let massStorageNVM = PCIMatch(classCode: 0x010800, mask: 0xFFFF00)
        #expect(massStorageNVM.matches(PCIIdentity(vendor: 1, device: 2, classCode: 0x010802)))
        #expect(massStorageNVM.matches(PCIIdentity(vendor: 1, device: 2, classCode: 0x010801)))
        #expect(!massStorageNVM.matches(PCIIdentity(vendor: 1, device: 2, classCode: 0x010601)))
        #expect(massStorageNVM.description == "class 0108xx")
        let anyNetwork = PCIMatch(classCode: 0x020000, mask: 0xFF0000)
        #expect(anyNetwork.matches(PCIIdentity(vendor: 1, device: 2, classCode: 0x028000)))
        #expect(!anyNetwork.matches(PCIIdentity(vendor: 1, device: 2, classCode: 0x010802)))
        #expect(PCIMatch(classCode: 0x010802).description == "class 010802")
    }

    /// The narrowest entry wins across tables: a driver naming the exact device beats one
    /// taking its whole class, whichever is listed first; a tie goes to the first listed.
    @Test func theNarrowestEntryWins() {
        let byClass = DriverIdentity(name: "generic", summary: "any NVMe", matches: [PCIMatch(classCode: 0x010802)])
        let byID = DriverIdentity(name: "special", summary: "one chip", matches: [PCIMatch(vendor: 0x144d, device: 0xa808)])
        let bySubsystem = DriverIdentity(name: "board", summary: "one board",
                                         matches: [PCIMatch(vendor: 0x144d, device: 0xa808, subsystemVendor: 0x1028, subsystemDevice: 0x1fe0)])
        let chip = PCIIdentity(vendor: 0x144d, device: 0xa808, subsystemVendor: 0x144d, subsystemDevice: 0xa801, classCode: 0x010802)
        let board = PCIIdentity(vendor: 0x144d, device: 0xa808, subsystemVendor: 0x1028, subsystemDevice: 0x1fe0, classCode: 0x010802)
        let registry = DriverRegistry([byClass, byID, bySubsystem])
        #expect(registry.driver(for: chip)?.driver.name == "special")
        #expect(registry.driver(for: board)?.driver.name == "board")
        #expect(registry.driver(for: PCIIdentity(vendor: 0x1c5c, device: 0x1327, classCode: 0x010802))?.driver.name == "generic")
        let twin = DriverIdentity(name: "twin", summary: "same table", matches: byID.matches)
        #expect(DriverRegistry([twin, byID]).driver(for: chip)?.driver.name == "twin")
    }

    /// A driver offered a device outside its table is refused with a message naming the ids it
    /// supports, the device's ids, and the driver that would take it.
    @Test func aRefusalNamesBothSidesAndTheRightDriver() throws {
        let e1000 = PCIIdentity(vendor: 0x8086, device: 0x100e, subsystemVendor: 0x1af4, subsystemDevice: 0x1100, classCode: 0x020000)
        let refusal = try #require(DriverRegistry.samples.refusal(of: .nvme, at: "0000:00:04.0", e1000))
        #expect(refusal.description.contains("class 010802 (NVM Express), 1b36:0010"), "\(refusal)")
        #expect(refusal.description.contains("0000:00:04.0 8086:100e"), "\(refusal)")
        #expect(refusal.remedy.contains("modeless run e1000 0000:00:04.0"), "\(refusal.remedy)")
        #expect(DriverRegistry.samples.refusal(of: .e1000, at: "0000:00:04.0", e1000) == nil)
        let unknown = try #require(DriverRegistry.samples.refusal(of: .edu, at: "0000:00:01.0", PCIIdentity(vendor: 0x1af4, device: 0x1045)))
        #expect(unknown.description.contains("supports 1234:11e8"))
        #expect(unknown.instead == nil && unknown.remedy.contains("modeless drivers"))
    }

    @Test func everySampleDriverHasAUniqueNameAndATable() {
        let names = DriverRegistry.samples.drivers.map(\.name)
        #expect(names == ["edu", "e1000", "nvme"])
        for driver in DriverRegistry.samples.drivers { #expect(!driver.matches.isEmpty) }
    }
}
