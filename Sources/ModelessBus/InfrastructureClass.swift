/// PCI base classes that are the machine's own plumbing rather than devices to drive:
/// binding one to a user-mode driver can cut off every device behind a bridge, or the
/// platform's interrupts, timers, IOMMU or memory. ``PCIBinder`` refuses them unless forced.
///
/// Neither dpdk-devbind nor SPDK's setup.sh has such a list (they bind what they are told, or
/// only the classes and ids they know); these are the base classes whose functions no user-mode
/// driver should take by accident. Functions of class 08 80 include DMA engines (Intel I/OAT,
/// DSA) that DPDK does drive from user space: they need `--force`.
public enum InfrastructureClass: UInt8, Sendable, CaseIterable {
    /// 0x05: RAM, flash and CXL memory controllers.
    case memoryController = 0x05
    /// 0x06: host, ISA, PCI-to-PCI, CardBus and other bridges (non-transparent bridges too).
    case bridge = 0x06
    /// 0x08: interrupt controllers, DMA controllers, timers, RTCs, hot-plug controllers,
    /// SD host controllers, IOMMUs, root complex event collectors, other system peripherals.
    case systemPeripheral = 0x08
    /// 0x0b: processors and co-processors.
    case processor = 0x0b

    /// The class of a 24-bit class code, or `nil` for a device class Modeless binds freely.
    public init?(classCode: UInt32) {
        self.init(rawValue: UInt8(truncatingIfNeeded: classCode >> 16))
    }

    /// A name for the base class when pci.ids has none for the subclass.
    public var name: String {
        switch self {
        case .memoryController: "memory controller"
        case .bridge: "bridge"
        case .systemPeripheral: "system peripheral"
        case .processor: "processor"
        }
    }
}

extension PCIDevice {
    /// What the function is, when its class makes it platform infrastructure: `a host bridge`,
    /// `an IOMMU`, `a RAM memory` (the subclass's pci.ids name, else the base class's); `nil` for
    /// any other device.
    public var infrastructureRole: String? {
        guard let infrastructure = InfrastructureClass(classCode: classCode) else { return nil }
        var name = className ?? infrastructure.name
        // "Host bridge" reads "host bridge" in a sentence; "PCI bridge" and "IOMMU" stay as they are.
        if let first = name.first, first.isUppercase, name.dropFirst().first?.isLowercase == true {
            name = first.lowercased() + name.dropFirst()
        }
        return ("aeiouAEIOU".contains(name.first ?? "x") ? "an " : "a ") + name
    }
}
