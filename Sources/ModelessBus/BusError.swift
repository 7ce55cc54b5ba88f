/// Why a discovery, bind or unbind request was refused or failed.
///
/// Every error says what was wrong (``message``) and what to do about it (``remedy``).
/// A refused bind or unbind changes nothing on the system.
public struct BusError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The kind of failure; the command line maps each kind to a documented exit code.
    public enum Kind: String, Sendable, Equatable, CaseIterable {
        /// The text is not a PCI address or `vendor:device` id.
        case malformedAddress
        /// No PCI function matches.
        case noSuchDevice
        /// A `vendor:device` id matches more than one function.
        case ambiguousDevice
        /// The kernel is using the device (an interface that is up, a mounted block device).
        case deviceInUse
        /// Another member of the device's IOMMU group is still on a host driver.
        case iommuGroupNotViable
        /// vfio-pci was asked for but the device has no IOMMU group.
        case noIOMMU
        /// The driver's kernel module cannot be loaded.
        case moduleUnavailable
        /// The caller may not change bindings (sysfs is writable by root only).
        case notPermitted
        /// The driver named is not one Modeless binds to.
        case unsupportedDriver
        /// The device is not bound to a user-mode driver, so there is nothing to restore.
        case notBound
        /// The kernel did not complete the change; the previous state was restored.
        case kernelRefused
        /// The function is platform infrastructure (a bridge, a system peripheral such as an
        /// IOMMU or timer, a memory controller, a processor), not a device to drive.
        case infrastructureDevice
        /// A block device of the function carries a partition table or a file system, RAID,
        /// LVM or other signature: data a user-mode driver could overwrite.
        case holdsData
        /// A process has the function's user-mode node open (`/dev/vfio/GROUP`, `/dev/uioN`),
        /// so moving it would wait for that process to let go.
        case heldByProcess
        /// A persistent override file cannot be used: not named after a PCI address, not valid
        /// JSON, or naming a driver Modeless does not bind to.
        case invalidOverride
        /// No persistent override is recorded for the device named.
        case noOverride
        /// A system call failed in a way not covered above.
        case systemFailure
    }

    /// What kind of failure this is: it chooses the command line's exit code.
    public var kind: Kind
    /// What was wrong, naming the device or input.
    public var message: String
    /// What to do about it.
    public var remedy: String

    /// A failure of `kind`: `message` says what was wrong (naming the device or input), `remedy`
    /// what to do (empty when there is nothing to do).
    public init(_ kind: Kind, _ message: String, remedy: String) {
        self.kind = kind
        self.message = message
        self.remedy = remedy
    }

    /// The message, and the remedy on a second line after `hint:` when there is one.
    public var description: String {
        remedy.isEmpty ? message : "\(message)\n  hint: \(remedy)"
    }
}
