extension DriverIdentity {
    /// The NVMe driver takes any NVM Express controller by class (mass storage, non-volatile
    /// memory, NVM Express interface), as Linux's nvme driver does, and names QEMU's controller
    /// too (it carries that class; the entry documents the device the driver is tested on).
    public static let nvme = DriverIdentity(
        name: "nvme", summary: "NVM Express controllers",
        matches: [PCIMatch(classCode: 0x01_08_02, name: "NVM Express"),
                  PCIMatch(vendor: 0x1b36, device: 0x0010, name: "QEMU NVMe controller")])
}
