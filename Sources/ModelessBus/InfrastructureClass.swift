/// PCI base classes that are the machine's own plumbing rather than devices to drive:
/// binding one to a user-mode driver can cut off every device behind a bridge, or the
/// platform's interrupts, timers, IOMMU or memory. ``PCIBinder`` refuses them unless forced.
///
/// dpdk-devbind and SPDK's setup.sh handle only the classes and ids they know (network, crypto,
/// Intel's co-processors, and by id a few DMA engines, event units and non-transparent
/// bridges) rather than refusing a list; these are the base classes whose functions no
/// user-mode driver should take by accident. Co-processors (class 0b 40: accelerators such as
/// Intel QuickAssist, which DPDK drives) are not refused. Functions of class 08 80 include DMA
/// engines (Intel I/OAT, DSA) that DPDK drives too: they need `--force`.
public enum InfrastructureClass: UInt8, Sendable, CaseIterable {
    /// 0x05: RAM, flash and CXL memory controllers.
    case memoryController = 0x05
    /// 0x06: host, ISA, PCI-to-PCI, CardBus and other bridges (non-transparent bridges too).
    case bridge = 0x06
    /// 0x08: interrupt controllers, DMA controllers, timers, RTCs, hot-plug controllers,
    /// SD host controllers, IOMMUs, root complex event collectors, other system peripherals.
    case systemPeripheral = 0x08
    /// 0x0b: processors (386 to MIPS, other), but not co-processors (0b 40).
    case processor = 0x0b

    /// The subclass of base class 0x0b that is an accelerator, not a processor.
    static let coProcessorSubclass: UInt8 = 0x40

    /// The class of a 24-bit class code, or `nil` for a device class Modeless binds freely.
    public init?(classCode: UInt32) {
        let base = UInt8(truncatingIfNeeded: classCode >> 16), subclass = UInt8(truncatingIfNeeded: classCode >> 8)
        if base == Self.processor.rawValue && subclass == Self.coProcessorSubclass { return nil }
        self.init(rawValue: base)
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
