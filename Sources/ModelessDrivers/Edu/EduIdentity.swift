extension DriverIdentity {
    /// The edu driver takes QEMU's edu device; its start then probes the identification register.
    public static let edu = DriverIdentity(
        name: "edu", summary: "QEMU's edu teaching device",
        matches: [PCIMatch(vendor: 0x1234, device: 0x11e8, name: "QEMU edu")])
}
