import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Anonymous memory faulted in ahead of time for the DMA buffers a process will allocate,
/// so that allocating them later costs only the IOMMU mapping, not the page faults and the
/// zeroing. A warm standby fills it while it waits for its device, which it cannot open yet
/// (see docs/kernel-interfaces.md); VFIO's small-page allocations then take their memory
/// from the front of the reserve, and once it is used up, allocate as usual.
public enum DMAMemoryReserve {
    private struct Region: @unchecked Sendable {
        var base: UnsafeMutableRawPointer
        var length: Int
        var used: Int
    }

    private static let region = Mutex<Region?>(nil)

    /// Maps and faults in `bytes` (rounded up to whole pages) for later DMA buffers. Returns
    /// false, leaving nothing reserved, when the memory cannot be had; a second call while
    /// memory is reserved adds nothing.
    @discardableResult
    public static func fill(bytes: Int) -> Bool {
        guard bytes > 0 else { return false }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let length = (bytes + page - 1) / page * page
        return region.withLock { region in
            guard region == nil else { return false }
            guard let base = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0),
                  base != MAP_FAILED else { return false }
            region = Region(base: base, length: length, used: 0)
            return true
        }
    }

    /// How many reserved bytes are still unused.
    public static var available: Int { region.withLock { $0.map { $0.length - $0.used } ?? 0 } }

    /// `length` bytes (a multiple of the page size) from the reserve, or nil when fewer are
    /// left. The memory is the caller's from then on: it unmaps it with `munmap` as memory it
    /// mapped itself.
    static func take(_ length: Int) -> UnsafeMutableRawPointer? {
        region.withLock { region in
            guard let current = region, current.length - current.used >= length else { return nil }
            region?.used += length
            return current.base + current.used
        }
    }
}
