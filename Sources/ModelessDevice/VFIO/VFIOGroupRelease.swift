import ModelessBus
import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// Waiting for a VFIO group that a process which just died still holds.
///
/// A group can be open in one process at a time. When its holder dies, the kernel releases
/// the group only once the last reference to it goes, which can be after the process has
/// ended (a mapping of the device's BARs dropped with the process's memory, from a kernel
/// worker): a successor that opens the group at once may get EBUSY.
public enum VFIOGroupRelease {
    /// Waits until the VFIO group of the function at `address` can be opened, at most
    /// `seconds` (trying every 2 ms). Returns how many nanoseconds it waited, or nil when it
    /// was still busy at the end (or the function has no IOMMU group: then nothing waits and
    /// the open reports the problem).
    public static func wait(for address: PCIAddress, seconds: Double, bus: PCIBus = PCIBus()) -> UInt64? {
        guard let group = try? bus.device(at: address).iommuGroup else { return 0 }
        let path = "/dev/vfio/\(group)"
        let start = monotonicNanoseconds()
        let deadline = start + UInt64(seconds * 1e9)
        while true {
            let fd = open(path, O_RDWR | O_CLOEXEC)
            if fd >= 0 {
                close(fd)
                return monotonicNanoseconds() - start
            }
            guard errno == EBUSY, monotonicNanoseconds() < deadline else { return errno == EBUSY ? nil : monotonicNanoseconds() - start }
            usleep(2_000)
        }
    }
}
