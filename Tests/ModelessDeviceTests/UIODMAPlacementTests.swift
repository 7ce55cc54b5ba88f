@testable import ModelessDevice
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Placing UIO DMA memory below a device's DMA limit: the choice among probed pages, and the
/// one-read lookup of a region's physical addresses.
@Suite("UIO DMA placement")
struct UIODMAPlacementTests {
    @Test func theFirstPageWhollyBelowTheLimitIsChosen() {
        let limit: UInt64 = 1 << 28
        // Not resident, above, straddling the limit, below, below.
        let frames: [UInt64] = [0, 0x3000_0000, limit - 0x800, limit - 0x2000, 0x1000]
        #expect(UIODevice.firstPage(of: frames, size: 4096, below: limit) == 3)
        #expect(UIODevice.firstPage(of: [limit - 0x1000], size: 4096, below: limit) == 0, "a page ending at the limit fits")
        #expect(UIODevice.firstPage(of: [0, limit, 0x4000_0000], size: 4096, below: limit) == nil)
        #expect(UIODevice.firstPage(of: [0x1000], size: 4096, below: 0x800) == nil, "a limit below one page fits nothing")
        #expect(UIODevice.firstPage(of: [0x10_0000_0000_0000], size: 4096, below: .max) == 0, "no limit (64 bits)")
        let huge = 2 << 20
        #expect(UIODevice.firstPage(of: [limit - UInt64(huge)], size: huge, below: limit) == 0, "a huge page ending at the limit fits")
        #expect(UIODevice.firstPage(of: [limit - 0x1000], size: huge, below: limit) == nil, "a huge page is checked whole")
    }

    /// The physical addresses read for a whole region at once are the ones read page by page.
    @Test(.enabled(if: getuid() == 0, "pagemap shows physical addresses to root only"))
    func aRegionsAddressesInOneReadAreEachPagesOwn() throws {
        let length = UIODevice.dmaProbeRegion
        let base = try #require(mmap(nil, length, PROT_READ | PROT_WRITE,
                                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE | MAP_LOCKED, -1, 0))
        #expect(base != MAP_FAILED)
        defer { munmap(base, length) }
        let pages = length / 4096
        let frames = try UIODevice.physicalAddresses(of: base, pages: pages)
        #expect(frames.count == pages)
        #expect(frames.allSatisfy { $0 != 0 && $0 % 4096 == 0 })
        #expect(Set(frames).count == pages, "every page is its own frame")
        for index in [0, 1, pages / 2, pages - 1] {
            let single = try UIODevice.physicalAddresses(of: base + index * 4096, pages: 1)
            #expect(single == [frames[index]], "page \(index)")
        }
    }
}
