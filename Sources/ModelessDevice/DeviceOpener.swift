import ModelessBus
import ModelessSystem

/// Opens a bound PCI function with the backend its driver calls for.
public enum DeviceOpener {
    /// Options for either backend.
    public struct Options: Sendable {
        /// The device's DMA address width (VFIO allocates device addresses below 2^bits).
        public var dmaAddressBits = 39
        /// Permit DMA over UIO, which has no isolation.
        public var allowUnisolatedDMA = false

        /// Options with a 39-bit DMA mask and no DMA over UIO.
        public init(dmaAddressBits: Int = 39, allowUnisolatedDMA: Bool = false) {
            self.dmaAddressBits = dmaAddressBits
            self.allowUnisolatedDMA = allowUnisolatedDMA
        }
    }

    /// Opens `address` through VFIO if it is bound to vfio-pci, UIO if to uio_pci_generic.
    public static func open(_ address: PCIAddress, options: Options = Options(), bus: PCIBus = PCIBus(),
                            system: any SystemCalls = LinuxSystemCalls()) throws(DeviceError) -> any DeviceAccess {
        let driver = FileAccess.linkTargetName("\(bus.path(of: address))/driver")
        switch driver {
        case UserModeDriver.vfioPCI.rawValue:
            return try VFIODevice(address, options: .init(dmaAddressBits: options.dmaAddressBits), bus: bus, system: system)
        case UserModeDriver.uioPCIGeneric.rawValue:
            return try UIODevice(address, options: .init(allowUnisolatedDMA: options.allowUnisolatedDMA,
                                                 dmaAddressBits: options.dmaAddressBits), bus: bus, system: system)
        default:
            guard FileAccess.isDirectory(bus.path(of: address)) else {
                throw DeviceError(.notBound, address, "no PCI device at this address; `modeless list` shows them")
            }
            throw DeviceError(.notBound, address,
                              "is bound to \(driver ?? "no driver"), not a user-mode driver: run `sudo modeless bind \(address)` (vfio-pci) or add `--to uio_pci_generic`")
        }
    }
}
