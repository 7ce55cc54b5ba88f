import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// Marks the user-mode nodes that Modeless created by binding, so that the udev rules
/// (`udev/70-modeless.rules`) hand those, and no others, to the configured user and group.
///
/// One empty file per grant under `access/` in the binding store's directory
/// (`/run/modeless/access` by default, which is where the installed rules look):
/// `vfio/GROUP` for an IOMMU group whose `/dev/vfio/GROUP` Modeless made by binding one of its
/// functions to vfio-pci, and `pci/ADDRESS` for each function Modeless bound (its `/dev/uioN`
/// and `/dev/vfio/devices/vfioN` have it as their PCI parent). A group that libvirt or another
/// tool handed to vfio-pci has no mark, so udev leaves its node as the kernel made it.
///
/// The binder writes the marks before it moves the function, since udev runs the rules when the
/// node appears, and removes them once the function is given back.
public struct AccessMarkers: Sendable {
    /// The directory holding the marks (`/run/modeless/access` in ``PCIBinder``'s standard store),
    /// with `vfio/` and `pci/` below it.
    public let directory: String

    /// The marks under `directory`; nothing is created until a mark is written.
    public init(directory: String) {
        self.directory = directory
    }

    /// The mark of a VFIO group: `access/vfio/GROUP`.
    public func groupMark(_ group: Int) -> String { "\(directory)/vfio/\(group)" }
    /// The mark of a function: `access/pci/ADDRESS`.
    public func functionMark(_ address: PCIAddress) -> String { "\(directory)/pci/\(address)" }

    /// The VFIO groups marked now.
    public func markedGroups() -> [Int] {
        ((try? FileAccess.listDirectory("\(directory)/vfio")) ?? []).compactMap { Int($0) }.sorted()
    }

    /// Marks a function about to be bound to `driver`, and its group when that is vfio-pci.
    public func grant(_ device: PCIDevice, driver: UserModeDriver) throws(BusError) {
        var marks = [functionMark(device.address)]
        if driver == .vfioPCI, let group = device.iommuGroup { marks.append(groupMark(group)) }
        do throws(SystemError) {
            for mark in marks {
                try FileAccess.createDirectories(String(mark[..<mark.lastIndex(of: "/")!]))
                try FileAccess.replaceFile(mark, with: Array("\(device.address)\n".utf8))
            }
        } catch {
            throw BusError(.systemFailure, "cannot record the access grant of \(device.address): \(error)",
                           remedy: "set MODELESS_STATE_DIR to a writable directory, or run as root")
        }
    }

    /// Removes a function's mark, and its group's mark when no other function of the group is
    /// still marked.
    public func revoke(_ device: PCIDevice) throws(BusError) {
        var marks = [functionMark(device.address)]
        if let group = device.iommuGroup,
           !device.iommuGroupPeers.contains(where: { FileAccess.exists(functionMark($0)) }) {
            marks.append(groupMark(group))
        }
        for mark in marks where FileAccess.exists(mark) && unlink(mark) != 0 {
            throw BusError(.systemFailure, "cannot remove the access grant \(mark): \(Errno.current)",
                           remedy: "remove it by hand (rm \(mark)); it lets the udev rules open the node to the configured user")
        }
    }
}
