/// Everything Modeless knows about one PCI function: identity, names, driver, IOMMU group,
/// BARs, interrupts, capabilities and what the kernel is using it for.
///
/// A snapshot: read it again with ``PCIBus/device(at:)`` after a bind or unbind.
public struct PCIDevice: Sendable, Equatable {
    public var address: PCIAddress
    public var vendorID: UInt16
    public var deviceID: UInt16
    public var subsystemVendorID: UInt16
    public var subsystemID: UInt16
    /// The 24-bit class code (base class, subclass, programming interface).
    public var classCode: UInt32
    public var revision: UInt8

    public var vendorName: String?
    public var deviceName: String?
    public var subsystemName: String?
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
    public var bars: [PCIBar]
    public var interrupts: InterruptCapabilities
    public var capabilities: [PCICapability]
    /// Whether all 256 bytes of configuration space could be read (needs root); if not, the
    /// capability list and interrupt details are unknown.
    public var capabilitiesReadable: Bool
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

    public static let names = Set(allCases.map(\.rawValue))

    /// The kernel module that provides the driver.
    public var moduleName: String { rawValue.replacingDashes() }
}

extension String {
    func replacingDashes() -> String { String(map { $0 == "-" ? "_" : $0 }) }
}
