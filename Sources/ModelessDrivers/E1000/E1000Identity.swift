extension DriverIdentity {
    /// The e1000 driver's match table: the chips it has been written and tested for. Add an
    /// entry here when the driver learns another chip.
    public static let e1000 = DriverIdentity(
        name: "e1000", summary: "Intel 82540EM and 82574L gigabit Ethernet",
        matches: [PCIMatch(vendor: 0x8086, device: 0x100e, name: "82540EM"),
                  PCIMatch(vendor: 0x8086, device: 0x10d3, name: "82574L")])
}
