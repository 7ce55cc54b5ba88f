/// Everything Modeless knows about one PCI function: identity, names, driver, IOMMU group,
/// BARs, interrupts, capabilities and what the kernel is using it for.
///
/// A snapshot: read it again with ``PCIBus/device(at:)`` after a bind or unbind.
public struct PCIDevice: Sendable, Equatable {
    /// Where the function sits: domain, bus, device and function.
    public var address: PCIAddress
    /// The vendor ID (`8086` for Intel).
    public var vendorID: UInt16
    /// The device ID, which with the vendor names the chip.
    public var deviceID: UInt16
    /// The subsystem vendor ID: who made the board around the chip.
    public var subsystemVendorID: UInt16
    /// The subsystem ID, the board maker's own number.
    public var subsystemID: UInt16
    /// The 24-bit class code (base class, subclass, programming interface).
    public var classCode: UInt32
    /// The revision ID (a chip stepping).
    public var revision: UInt8

    /// The vendor's name from pci.ids, or nil when the database lacks it.
    public var vendorName: String?
    /// The device's name from pci.ids, or nil when the database lacks it.
    public var deviceName: String?
    /// The subsystem's name from pci.ids, or nil when the database lacks it.
    public var subsystemName: String?
    /// The class's name from pci.ids (`Ethernet controller`), or nil when the database lacks it.
    public var className: String?

    /// The kernel driver bound now, or `nil` when none is.
    public var driver: String?
    /// The driver named in `driver_override`, or `nil` when it is empty.
    public var driverOverride: String?
    /// The IOMMU group number, or `nil` when the device has no IOMMU (or none is enabled).
    public var iommuGroup: Int?
    /// The other functions in the same IOMMU group.
    public var iommuGroupPeers: [PCIAddress]
    /// The NUMA node, or `nil` when the platform does not say.
    public var numaNode: Int?
    /// The BARs the kernel assigned (empty ones left out), from sysfs's `resource` file.
    public var bars: [PCIBar]
    /// INTx, MSI and MSI-X as configuration space describes them.
    public var interrupts: InterruptCapabilities
    /// Every capability found in configuration space, standard and extended.
    public var capabilities: [PCICapability]
    /// Whether all 256 bytes of configuration space could be read (needs root); if not, the
    /// capability list and interrupt details are unknown.
    public var capabilitiesReadable: Bool
    /// What the kernel uses the function for now (its network interfaces, its block devices, their
    /// mounts and holders): the reasons a bind may be refused.
    public var kernelUses: [KernelUse]

    /// The 16-bit base class and subclass, as `lspci -nn` shows them in brackets.
    public var classAndSubclass: UInt16 { UInt16(classCode >> 8) }

    /// `8086:100e`.
    public var ids: String { "\(hex(vendorID, width: 4)):\(hex(deviceID, width: 4))" }

    /// Whether the kernel uses the device in a way a rebind would break.
    public var isActiveInKernel: Bool { kernelUses.contains { $0.isActive } }

    /// Whether the current driver is one of Modeless's user-mode drivers.
    public var isBoundForUserMode: Bool { driver.map(UserModeDriver.names.contains) ?? false }

    /// Whether this is a PCI-to-PCI bridge (class 06 04), which may share a group with devices.
    public var isBridge: Bool { classAndSubclass == 0x0604 }

    /// The device's name for people: `Intel Corporation 82540EM Gigabit Ethernet Controller`.
    public var displayName: String {
        let vendor = vendorName ?? "vendor \(hex(vendorID, width: 4))"
        let device = deviceName ?? "device \(hex(deviceID, width: 4))"
        return "\(vendor) \(device)"
    }
}

/// The kernel drivers that hand a PCI function to user space.
public enum UserModeDriver: String, Sendable, CaseIterable, Codable {
    /// VFIO: IOMMU-isolated access, MSI/MSI-X, needs an IOMMU.
    case vfioPCI = "vfio-pci"
    /// UIO: register access and INTx only; no DMA isolation.
    case uioPCIGeneric = "uio_pci_generic"

    /// The kernel driver names, for telling a function bound for user mode from another.
    public static let names = Set(allCases.map(\.rawValue))

    /// The kernel module that provides the driver.
    public var moduleName: String { rawValue.replacingDashes() }
}

extension String {
    func replacingDashes() -> String { String(map { $0 == "-" ? "_" : $0 }) }
}
