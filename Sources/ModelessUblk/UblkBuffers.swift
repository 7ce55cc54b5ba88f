import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// Where each tag's data buffer lives: the kernel copies a request's data into it (writes)
/// or out of it (reads), at the address given with the tag's fetch.
///
/// The default, ``PageBufferProvider``, maps anonymous memory. A backend whose device does
/// DMA can provide its own DMA buffers instead, so that the device reads and writes the very
/// memory the kernel copies to and from (one copy, the kernel's, and none in user space).
public protocol UblkBufferProvider: AnyObject {
    /// Tag `tag`'s buffer on queue `queue`: at least the device's maximum I/O size, page
    /// aligned, valid until ``release(queue:)``.
    func buffer(queue: Int, tag: Int) -> UnsafeMutableRawBufferPointer
    /// Makes the buffers of `queue` (its `depth` tags of `bytes` each) ready.
    func prepare(queue: Int, depth: Int, bytes: Int) throws(UblkError)
    /// The queue has stopped; its buffers are no longer used.
    func release(queue: Int)
}

/// Buffers in anonymous memory: one mapping per queue, `depth` page-aligned slots.
public final class PageBufferProvider: UblkBufferProvider {
    private struct Region {
        var base: UnsafeMutableRawPointer
        var length: Int
        var slot: Int
    }

    private var regions: [Int: Region] = [:]
    private let lock = ConditionLock()

    /// A provider with no buffers yet; each queue's are mapped at ``prepare(queue:depth:bytes:)``.
    public init() {}

    /// Maps `depth` slots of `bytes` rounded up to whole pages for `queue`, private and anonymous.
    /// - Throws: ``UblkError/Kind/system`` naming the size when `mmap` fails.
    public func prepare(queue: Int, depth: Int, bytes: Int) throws(UblkError) {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let slot = (bytes + page - 1) / page * page
        let length = slot * depth
        guard let base = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), base != MAP_FAILED else {
            throw UblkError(.system, "cannot map \(length) bytes of I/O buffers for queue \(queue): \(Errno.current)")
        }
        lock.withLock { regions[queue] = Region(base: base, length: length, slot: slot) }
    }

    /// Tag `tag`'s slot on `queue`, a whole number of pages; `queue` must have been prepared.
    public func buffer(queue: Int, tag: Int) -> UnsafeMutableRawBufferPointer {
        let region = lock.withLock { regions[queue]! }
        return UnsafeMutableRawBufferPointer(start: region.base + tag * region.slot, count: region.slot)
    }

    /// Unmaps `queue`'s slots; a queue never prepared, or already released, is ignored.
    public func release(queue: Int) {
        guard let region = lock.withLock({ regions.removeValue(forKey: queue) }) else { return }
        munmap(region.base, region.length)
    }

    deinit {
        for queue in lock.withLock({ Array(regions.keys) }) { release(queue: queue) }
    }
}
