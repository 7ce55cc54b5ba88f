import CModelessShim
import Glibc
import ModelessBus
@testable import ModelessDevice
import ModelessSystem
import Testing

/// DMA memory kept across a handover: the kept region outside every window, allocation and
/// inheritance against the in-process VFIO kernel, the `kept` handover message, and views.
@Suite(.serialized) struct VFIOKeptDMATests {
    /// Whether `fd` is (still) a kept memfd: a closed one's number may be taken by another file.
    static func isOpen(_ fd: Int32) -> Bool {
        (try? FileAccess.readLink("/proc/self/fd/\(fd)"))?.hasPrefix("/memfd:" + VFIODevice.keptMemfdName) == true
    }

    /// A handover of `first` whose kept memfd is a copy (as `SCM_RIGHTS` makes it), so that
    /// each side closes its own.
    static func handover(_ first: VFIODevice) throws -> VFIODescriptors {
        var handed = try first.handoverDescriptors()
        if let kept = handed.kept { handed.kept?.fd = dup(kept.fd) }
        return handed
    }

    @Test func theKeptRegionIsOutsideEveryWindow() throws {
        let kernel = FakeVFIOKernel()
        let first = try openEdu(kernel)
        defer { first.close() }
        let region = first.keptRegion
        #expect(region == (UInt64(1 << 28) - 16 << 20)..<(1 << 28))
        let kept = try first.allocateKeptDMA(size: 5000)
        #expect(kept.deviceAddress == region.lowerBound && kept.size == 8192)
        #expect(kernel.iommuMappings[region.lowerBound] == 8192)
        let ordinary = try first.allocateDMA(size: 4 << 20)
        #expect(!region.overlaps(ordinary.deviceAddress..<(ordinary.deviceAddress + UInt64(ordinary.size))))
        let handed = try Self.handover(first)
        defer { handed.kept.map { _ = close($0.fd) } }
        #expect(!handed.window.overlaps(region), "the holder's half")
        #expect(handed.kept == VFIOKeptDMA(fd: handed.kept?.fd ?? -1, deviceAddress: region.lowerBound, size: 8192))
        let whole = (UInt64(1) << 20)..<region.lowerBound
        let (own, predecessor) = VFIODevice.windows(whole: whole, predecessor: handed.window)
        #expect(!own.overlaps(region) && predecessor.map { !$0.overlaps(region) } == true, "the successor's half")
        // Narrow DMA masks: a quarter of the addresses at most.
        #expect(VFIODevice.keptRegion(below: (1 << 20)..<(1 << 22)) == 0x34_0000..<(1 << 22), "a quarter of 3 MiB")
        #expect(VFIODevice.keptRegion(below: (1 << 20)..<UInt64.max).upperBound <= UInt64.max)
    }

    @Test func aSuccessorInheritsTheKeptMemoryWhereTheDeviceHasIt() throws {
        let kernel = FakeVFIOKernel()
        let first = try openEdu(kernel)
        let kept = try first.allocateKeptDMA(size: 8192)
        let pattern = (0..<256).map { UInt8($0 ^ 0x5a) }
        try kept.write(pattern, at: 100)
        try first.config.setBusMastering(true)
        let handed = try Self.handover(first)
        let memfd = try #require(handed.kept?.fd)
        #expect(try FileAccess.readLink("/proc/self/fd/\(memfd)").hasPrefix("/memfd:modeless-kept-dma"))

        var owned = false
        let second = try VFIODevice(eduAddress, adopting: handed, owned: &owned, options: .init(dmaAddressBits: 28), system: kernel)
        #expect(kernel.iommuMappings[kept.deviceAddress] == 8192, "adoption leaves the kept mapping alone")
        let refusal = #expect(throws: DeviceError.self) { _ = try second.allocateKeptDMA(size: 4096) }
        #expect(refusal?.message.contains("before the adopted device is taken over") == true)
        let mapsBefore = kernel.calls.filter { $0 == "VFIO_IOMMU_MAP_DMA" }.count
        let inherited = try #require(try second.inheritKeptDMA())
        #expect(kernel.calls.filter { $0 == "VFIO_IOMMU_MAP_DMA" }.count == mapsBefore, "not mapped in the IOMMU again")
        #expect(inherited.deviceAddress == kept.deviceAddress && inherited.size == 8192)
        #expect(try inherited.read(256, at: 100) == pattern)
        try inherited.store32(0xfeed_f00d, at: 0)
        #expect(try kept.load32(at: 0) == 0xfeed_f00d, "the same memory")
        #expect(try second.inheritKeptDMA() == nil, "taken once")

        try second.takeOver(keepingBusMastering: true)
        #expect(try second.config.command().contains(.busMaster), "the device goes on running")
        #expect(second.adoptionSteps.contains("bus mastering kept"))
        #expect(try second.releasePredecessorMappings() != nil)
        #expect(kernel.iommuMappings[kept.deviceAddress] == 8192, "releasing the holder's window leaves the kept mapping")
        // Handed on again, the inherited memory goes with the descriptors.
        #expect(try second.handoverDescriptors().kept?.deviceAddress == kept.deviceAddress)
        let error = #expect(throws: DeviceError.self) { _ = try second.allocateKeptDMA(size: 4096) }
        #expect(error?.message.contains("one at a time") == true)
        inherited.free()
        #expect(kernel.iommuMappings[kept.deviceAddress] == nil, "freeing it unmaps it")
        #expect(!Self.isOpen(memfd), "and closes its memfd")
        let again = try second.allocateKeptDMA(size: 4096)
        #expect(again.deviceAddress == kept.deviceAddress && kernel.iommuMappings[again.deviceAddress] == 4096)
        second.close()
        #expect(again.isFreed)
        first.close()
        #expect(kernel.openDescriptors.isEmpty)
    }

    /// A standby that inherited its holder's kept memory ahead and then stops while it waits
    /// (a supervisor's shutdown) must leave the holder's mapping alone: the holder still runs on it.
    @Test func keptMemoryInheritedAheadIsLetGoWithoutUnmappingItBeforeTheTakeover() throws {
        let kernel = FakeVFIOKernel()
        let first = try openEdu(kernel)
        defer { first.close() }
        let kept = try first.allocateKeptDMA(size: 8192)
        var owned = false
        let second = try VFIODevice(eduAddress, adopting: try Self.handover(first), owned: &owned, options: .init(dmaAddressBits: 28), system: kernel)
        let inherited = try #require(try second.inheritKeptDMA())
        inherited.free()
        #expect(kernel.iommuMappings[kept.deviceAddress] == 8192, "freed before the takeover: the holder's mapping stays")
        let again = try Self.handover(first)
        var ownedAgain = false
        let third = try VFIODevice(eduAddress, adopting: again, owned: &ownedAgain, options: .init(dmaAddressBits: 28), system: kernel)
        _ = try #require(try third.inheritKeptDMA())
        third.close()
        #expect(kernel.iommuMappings[kept.deviceAddress] == 8192, "closed before the takeover: the holder's mapping stays")
        second.close()
        try kept.store32(7, at: 0)
        #expect(try kept.load32(at: 0) == 7, "the holder's memory is still its own")
    }

    @Test func keptMemoryNotInheritedIsClosedAndItsStaleMappingReplaced() throws {
        let kernel = FakeVFIOKernel()
        let first = try openEdu(kernel)
        let kept = try first.allocateKeptDMA(size: 4096)
        var owned = false
        let handed = try Self.handover(first)
        let memfd = try #require(handed.kept?.fd)
        let second = try VFIODevice(eduAddress, adopting: handed, owned: &owned, options: .init(dmaAddressBits: 28), system: kernel)
        try second.takeOver()
        #expect(!Self.isOpen(memfd), "not inherited by the takeover: closed")
        #expect(try second.inheritKeptDMA() == nil)
        #expect(try second.config.command().contains(.busMaster) == false)
        // The dead holder's mapping is still there: a new kept buffer replaces it.
        #expect(kernel.iommuMappings[kept.deviceAddress] == 4096)
        let fresh = try second.allocateKeptDMA(size: 3 * 4096)
        #expect(kernel.iommuMappings[fresh.deviceAddress] == 3 * 4096)
        second.close()
        first.close()

        // A leftover in the kept region: the allocation removes it first (a map over it would fail
        // with EEXIST); when that removal fails, nothing is left behind.
        let other = FakeVFIOKernel()
        let third = try openEdu(other)
        other.mapForeign(iova: third.keptRegion.lowerBound + 4096, size: 4096)
        other.fail("VFIO_IOMMU_UNMAP_DMA", with: .invalidArgument)
        let collision = #expect(throws: DeviceError.self) { _ = try third.allocateKeptDMA(size: 8192) }
        #expect(collision?.kind == .system)
        #expect(third.liveDMABufferCount == 0)
        #expect(!VFIOHandoverTests.openDescriptors().contains { $0.hasPrefix("/memfd:modeless-kept-dma") }, "the failed allocation's memfd was closed")
        let replaced = try third.allocateKeptDMA(size: 8192)
        #expect(other.iommuMappings[replaced.deviceAddress] == 8192 && other.iommuMappings.count == 1)
        third.close()
        #expect(other.openDescriptors.isEmpty)
    }

    @Test func aTakeoverThatClearsEverythingInheritsNothing() throws {
        let kernel = FakeVFIOKernel()
        let first = try openEdu(kernel)
        let kept = try first.allocateKeptDMA(size: 4096)
        var handed = try Self.handover(first)
        handed.window = (1 << 20)..<first.keptRegion.lowerBound  // no room beside the holder's window
        let memfd = try #require(handed.kept?.fd)
        var owned = false
        let second = try VFIODevice(eduAddress, adopting: handed, owned: &owned, options: .init(dmaAddressBits: 28), system: kernel)
        #expect(try second.inheritKeptDMA() == nil)
        #expect(!Self.isOpen(memfd))
        try second.takeOver()
        #expect(kernel.iommuMappings.isEmpty)
        second.close()
        first.close()
        _ = kept
    }

    @Test func keptMemoryOfTheWrongSizeIsRefusedAndClosed() throws {
        let kernel = FakeVFIOKernel()
        let first = try openEdu(kernel)
        let kept = try first.allocateKeptDMA(size: 4096)
        var handed = try Self.handover(first)
        handed.kept?.size = 8192
        let memfd = try #require(handed.kept?.fd)
        var owned = false
        let second = try VFIODevice(eduAddress, adopting: handed, owned: &owned, options: .init(dmaAddressBits: 28), system: kernel)
        let error = #expect(throws: DeviceError.self) { _ = try second.inheritKeptDMA() }
        #expect(error?.message.contains("is 4096 bytes") == true, "\(error?.message ?? "")")
        #expect(!Self.isOpen(memfd))
        #expect(second.liveDMABufferCount == 0)
        second.close()
        first.close()
        _ = kept
    }

    @Test func badKeptRequestsAreRefused() throws {
        let kernel = FakeVFIOKernel()
        let device = try openEdu(kernel)
        defer { device.close() }
        #expect(throws: DeviceError.self) { _ = try device.allocateKeptDMA(size: 0) }
        let tooLarge = #expect(throws: DeviceError.self) { _ = try device.allocateKeptDMA(size: Int(VFIODevice.keptRegionSize) + 1) }
        #expect(tooLarge?.kind == .outOfRange)
        #expect(kernel.iommuMappings.isEmpty && device.liveDMABufferCount == 0)
    }

    @Test func keptMessagesParseAndRoundTrip() {
        let message = VFIOHandoverMessage(role: .kept, address: eduAddress, group: 7, window: 0x10_0000..<0x800_0000,
                                          kept: 0xf00_0000..<0xf01_0000)
        #expect(message.text == "modeless-vfio-handover 1 kept 0000:00:03.0 7 100000-8000000 f000000-f010000")
        var why = ""
        #expect(VFIOHandoverMessage.parse(message.text, why: &why) == message)
        for text in ["modeless-vfio-handover 1 kept 0000:00:03.0 7 100000-8000000",
                     "modeless-vfio-handover 1 kept 0000:00:03.0 7 100000-8000000 f000000-f000010",
                     "modeless-vfio-handover 1 kept 0000:00:03.0 7 100000-8000000 msi/0"] {
            why = ""
            #expect(VFIOHandoverMessage.parse(text, why: &why) == nil)
            #expect(why.contains("a kept memory message needs its device addresses"), "\(text): \(why)")
        }
    }

    /// A memfd named `name` of `size` bytes.
    static func memfd(_ name: String, size: Int) throws -> Int32 {
        let fd = modeless_memfd(name)
        try #require(fd >= 0 && ftruncate(fd, off_t(size)) == 0)
        return fd
    }

    @Test func theServerHandsTheKeptMemfdOverWithItsAddresses() throws {
        var ends: [[Int32]] = []
        for _ in 0..<3 {
            var pair: [Int32] = [0, 0]
            try #require(pipe(&pair) == 0)
            ends.append(pair)
        }
        let memfd = try Self.memfd(VFIODevice.keptMemfdName, size: 8192)
        defer { (ends.joined() + [memfd]).forEach { close($0) } }
        var offered = VFIODescriptors(address: eduAddress, group: 3, container: ends[0][0], groupFD: ends[1][0], device: ends[2][0],
                                      window: 0x10_0000..<0x800_0000)
        offered.kept = VFIOKeptDMA(fd: memfd, deviceAddress: 0xf00_0000, size: 8192)
        let path = VFIOHandoverTests.socketPath("kept-server")
        let server = try VFIOHandoverServer(descriptors: offered, path: path)
        defer { server.stop() }
        func name(_ fd: Int32) -> String { (try? FileAccess.readLink("/proc/self/fd/\(fd)")) ?? "?" }
        let received = try VFIOHandover.receive(from: path, address: eduAddress, group: 3) { role in
            switch role {
            case .container: name(ends[0][0])
            case .group: name(ends[1][0])
            case .device: name(ends[2][0])
            default: "/memfd:" + VFIODevice.keptMemfdName
            }
        }
        defer { received.close() }
        let kept = try #require(received.kept)
        #expect(kept.deviceAddress == 0xf00_0000 && kept.size == 8192 && kept.fd != memfd)
        var byte: UInt8 = 0x77
        #expect(pwrite(memfd, &byte, 1, 4000) == 1)
        var read: UInt8 = 0
        #expect(pread(kept.fd, &read, 1, 4000) == 1 && read == 0x77, "the same memfd")
    }

    @Test func aKeptDescriptorThatIsNotTheKeptMemfdIsRefusedAndEverythingClosed() throws {
        // A pipe in the kept role.
        let path = VFIOHandoverTests.socketPath("kept-pipe")
        defer { unlink(path) }
        let roles: [VFIOHandoverMessage.Role] = [.container, .group, .device, .kept]
        let messages = roles.map {
            VFIOHandoverMessage(role: $0, address: eduAddress, group: 3, window: 1..<2, kept: $0 == .kept ? 0x1000..<0x2000 : nil).text
        }
        let sent = VFIOHandoverTests.SentPipes()
        let server = try VFIOHandoverTests.serve(messages, at: path, sent: sent)
        let error = #expect(throws: DeviceError.self) {
            _ = try VFIOHandover.receive(from: path, address: eduAddress, group: 3) { role in
                switch role {
                case .container: sent.all[0]
                case .group: sent.all[1]
                case .device: sent.all[2]
                default: "/memfd:" + VFIODevice.keptMemfdName
                }
            }
        }
        server.join()
        #expect(error?.message.contains("the kept descriptor is pipe:") == true, "\(error?.message ?? "")")
        #expect(sent.all.count == 4)
        #expect(VFIOHandoverTests.openDescriptors().isDisjoint(with: sent.all), "every descriptor received was closed")

        // A memfd of another name.
        let other = try Self.memfd("modeless-channel", size: 4096)
        defer { close(other) }
        var ends: [[Int32]] = []
        for _ in 0..<3 {
            var pair: [Int32] = [0, 0]
            try #require(pipe(&pair) == 0)
            ends.append(pair)
        }
        defer { ends.joined().forEach { close($0) } }
        var offered = VFIODescriptors(address: eduAddress, group: 3, container: ends[0][0], groupFD: ends[1][0], device: ends[2][0], window: 1..<2)
        offered.kept = VFIOKeptDMA(fd: other, deviceAddress: 0x1000, size: 4096)
        let serverPath = VFIOHandoverTests.socketPath("kept-other")
        let realServer = try VFIOHandoverServer(descriptors: offered, path: serverPath)
        defer { realServer.stop() }
        func name(_ fd: Int32) -> String { (try? FileAccess.readLink("/proc/self/fd/\(fd)")) ?? "?" }
        // The descriptors open on the offered files (the three pipes' read ends and the
        // memfd), told by device and inode: files other tests open and close meanwhile do not count.
        func identity(_ status: stat) -> [UInt64] { [UInt64(status.st_dev), UInt64(status.st_ino)] }
        let offeredFiles = Set(([other] + ends.map { $0[0] }).map { fd -> [UInt64] in
            var status = stat()
            _ = fstat(fd, &status)
            return identity(status)
        })
        func copies() -> Int {
            ((try? FileAccess.listDirectory("/proc/self/fd")) ?? []).filter { entry in
                var status = stat()
                return stat("/proc/self/fd/\(entry)", &status) == 0 && offeredFiles.contains(identity(status))
            }.count
        }
        let before = copies()
        let refused = #expect(throws: DeviceError.self) {
            _ = try VFIOHandover.receive(from: serverPath, address: eduAddress, group: 3) { role in
                switch role {
                case .container: name(ends[0][0])
                case .group: name(ends[1][0])
                case .device: name(ends[2][0])
                default: "/memfd:" + VFIODevice.keptMemfdName
                }
            }
        }
        #expect(refused?.message.contains("the kept descriptor is /memfd:modeless-channel") == true, "\(refused?.message ?? "")")
        #expect(before >= 4 && copies() == before, "nothing received stays open (\(copies()) open of the offered files, \(before) before)")
    }

    @Test func slicesAreBoundedAndDieWithTheirParent() throws {
        let kernel = FakeVFIOKernel()
        let device = try openEdu(kernel)
        let buffer = try device.allocateDMA(size: 8192)
        let view = try buffer.slice(at: 4096, size: 1024)
        #expect(view.deviceAddress == buffer.deviceAddress + 4096 && view.size == 1024)
        try view.store32(0xabcd_0123, at: 8)
        #expect(try buffer.load32(at: 4096 + 8) == 0xabcd_0123)
        #expect(throws: DeviceError.self) { try view.load32(at: 1024) }
        for (offset, size) in [(-1, 16), (0, 0), (0, 8193), (8192, 1), (4096, 4097), (Int.max, 2)] {
            let error = #expect(throws: DeviceError.self) { _ = try buffer.slice(at: offset, size: size) }
            #expect(error?.kind == .outOfRange, "\(offset), \(size)")
        }
        let inner = try view.slice(at: 512, size: 512)
        #expect(inner.deviceAddress == buffer.deviceAddress + 4096 + 512)
        let other = try buffer.slice(at: 0, size: 4096)
        other.free()
        #expect(!buffer.isFreed && device.liveDMABufferCount == 1, "freeing a view does nothing to the memory")
        #expect(try buffer.load32(at: 4096 + 8) == 0xabcd_0123)
        buffer.free()
        #expect(view.isFreed && inner.isFreed)
        let refused = #expect(throws: DeviceError.self) { try view.load32(at: 8) }
        #expect(refused?.kind == .closed)
        #expect(throws: DeviceError.self) { try inner.load8(at: 0) }
        #expect(throws: DeviceError.self) { _ = try buffer.slice(at: 0, size: 16) }
        // Closing the device invalidates the views of its buffers too.
        let second = try device.allocateDMA(size: 4096)
        let part = try second.slice(at: 0, size: 64)
        device.close()
        #expect(part.isFreed)
        #expect(throws: DeviceError.self) { try part.load8(at: 0) }
    }

    @Test func aDeviceOpenedAnewInheritsNothing() throws {
        let kernel = FakeVFIOKernel()
        let device: any DeviceAccess = try openEdu(kernel)
        defer { device.close() }
        #expect(try device.inheritKeptDMA() == nil, "a device opened anew inherits nothing")
    }
}
