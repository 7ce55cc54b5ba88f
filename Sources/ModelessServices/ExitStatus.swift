import ModelessBus

/// The documented exit codes of `modeless` (docs/cli.md lists them too): the status hosted
/// work ends with (``HostExit``) and the command line's refusals.
package enum ExitStatus {
    /// The exit code of a refusal of `kind`.
    package static func code(for kind: BusError.Kind) -> Int32 {
        switch kind {
        case .systemFailure: 1
        case .malformedAddress, .unsupportedDriver: 64
        case .ambiguousDevice: 65
        case .noSuchDevice: 66
        case .notBound: 67
        case .moduleUnavailable: 69
        case .noIOMMU: 70
        case .iommuGroupNotViable: 71
        case .deviceInUse: 75
        case .kernelRefused: 76
        case .notPermitted: 77
        case .infrastructureDevice: 78
        case .holdsData: 79
        case .heldByProcess: 80
        case .invalidOverride: 81
        case .noOverride: 82
        }
    }

    /// A driver was offered a device outside its match table, or no driver's table takes the
    /// device `modeless run ADDR` names.
    package static let unsupportedDevice: Int32 = 68

    /// Every exit code with its meaning, for `modeless --help`.
    package static let table = """
        0 success; 1 unexpected system failure; 64 malformed address or arguments; \
        65 vendor:device id matches several devices; 66 no such device; \
        67 device not bound to a user-mode driver; 68 driver does not support the device; \
        69 kernel module not available; \
        70 no IOMMU for vfio-pci; 71 IOMMU group not viable; 75 device in use by the kernel; \
        76 kernel refused the change (previous state restored); 77 not permitted; \
        78 platform infrastructure (bridge, system peripheral); 79 the device's block devices hold data; \
        80 a process holds the device; 81 a persistent override file cannot be used; \
        82 no persistent override for the device.
        """
}
