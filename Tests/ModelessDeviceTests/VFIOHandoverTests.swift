import Glibc
import ModelessBus
@testable import ModelessDevice
import ModelessSystem
import Testing

/// Handing an open VFIO device to a successor: adoption against the in-process VFIO kernel,
/// and the receiving side's checks against a socket that offers the wrong descriptors.
@Suite(.serialized) struct VFIOHandoverTests {
    /// The descriptors of this process that are open now (from /proc/self/fd).
    static func openDescriptors() -> Set<String> {
        Set(((try? FileAccess.listDirectory("/proc/self/fd")) ?? []).compactMap { try? FileAccess.readLink("/proc/self/fd/\($0)") }
            .filter { !$0.hasPrefix("/proc/") })
    }

    @Test func adoptionQuietsTheDeviceAndEmptiesTheAddressSpace() throws {
        let kernel = FakeVFIOKernel()
        let first = try openEdu(kernel)
        let buffer = try first.allocateDMA(size: 8192)
        try first.config.setBusMastering(true)
        let handed = try first.handoverDescriptors()
        let kept = (UInt64(1 << 28) - VFIODevice.keptRegionSize)..<(1 << 28)
        #expect(first.keptRegion == kept, "the kept region is the top 16 MiB, outside every window")
        let half: UInt64 = (1 << 20) + (kept.lowerBound - (1 << 20)) / 2
        #expect(handed.window == (1 << 20)..<half, "the holder keeps to the lower half from the handover on")
        // What the dead predecessor left: its mapping, one more in its window, and a stale one
        // in the successor's window (from a process two handovers back).
        kernel.mapForeign(iova: 0x200_0000, size: 4096)
        kernel.mapForeign(iova: half + 0x10_0000, size: 8192)
        #expect(kernel.iommuMappings.count == 3)
        let opensBefore = kernel.calls.filter { $0.hasPrefix("open ") }.count

        var owned = false
        let second = try VFIODevice(eduAddress, adopting: handed, owned: &owned, options: .init(dmaAddressBits: 28), system: kernel)
        #expect(try second.config.command().contains(.busMaster), "adopted ahead: the holder's device is left running")
        #expect(second.removal == nil, "adopted ahead: the holder keeps the device request interrupt")
        try second.takeOver()
        #expect(second.removal != nil)
        #expect(owned && second.adopted && !first.adopted)
        #expect(kernel.calls.filter { $0.hasPrefix("open ") }.count == opensBefore, "adoption opened nothing")
        #expect(try second.config.command().contains(.busMaster) == false, "bus mastering is off before anything is unmapped")
        #expect(Set(kernel.iommuMappings.keys) == [buffer.deviceAddress, 0x200_0000],
                "the stale mapping in its own window is gone; the predecessor's stay until it serves")
        #expect(try second.region(0).read32(at: 0) == 0x0100_00ed)
        let fresh = try second.allocateDMA(size: 4096)
        #expect(fresh.deviceAddress >= half && kernel.iommuMappings[fresh.deviceAddress] == 4096)
        #expect(try second.releasePredecessorMappings() != nil)
        #expect(Array(kernel.iommuMappings.keys) == [fresh.deviceAddress], "the predecessor's mappings are gone, its own stays")
        #expect(try second.releasePredecessorMappings() == nil)
        // Handed on again, it keeps its window; its successor takes the lower part.
        #expect(try second.handoverDescriptors().window == half..<kept.lowerBound)
        #expect(VFIODevice.windows(whole: (1 << 20)..<(1 << 28), predecessor: half..<(1 << 28)) == ((1 << 20)..<half, half..<(1 << 28)))
        second.close()
        #expect(!kernel.calls.contains("VFIO_GROUP_UNSET_CONTAINER"), "a shared group stays attached for whoever else holds it")
        #expect(kernel.openDescriptors.isEmpty)
        _ = buffer
    }

    @Test func aGroupNoLongerInItsContainerIsRefusedAndLeftToTheCaller() throws {
        let kernel = FakeVFIOKernel()
        let first = try openEdu(kernel)
        let handed = try first.handoverDescriptors()
        kernel.setContainerSet(false)
        var owned = false
        let error = #expect(throws: DeviceError.self) {
            _ = try VFIODevice(eduAddress, adopting: handed, owned: &owned, system: kernel)
        }
        #expect(error?.kind == .groupNotViable)
        #expect(error?.message.contains("no longer attached") == true)
        #expect(!owned)
        #expect(kernel.openDescriptors == ["container", "device 0000:00:03.0", "group"], "the caller still owns them")
        first.close()
    }

    @Test func aFailedReopenOfInterruptsOnAnAdoptedDeviceDisablesAndRetries() throws {
        let kernel = FakeVFIOKernel()
        let first = try openEdu(kernel)
        _ = try first.enableInterrupts(.msi, count: 1)
        var owned = false
        let second = try VFIODevice(eduAddress, adopting: try first.handoverDescriptors(), owned: &owned, system: kernel)
        try second.takeOver()
        kernel.fail("VFIO_DEVICE_SET_IRQS", with: .invalidArgument)
        let vectors = try second.enableInterrupts(.msi, count: 1)
        #expect(vectors.count == 1)
        #expect(kernel.interrupt(index: 1))
        #expect(fired(vectors[0]))
        second.close()
    }

    /// The holder's interrupt eventfds travel with its descriptors (copies, as SCM_RIGHTS
    /// makes them); the successor that enables the same kind and count reads them, with no
    /// VFIO_DEVICE_SET_IRQS, and gets the interrupts VFIO signals on them; anything else
    /// closes them and sets its own.
    @Test func theHoldersInterruptEventfdsAreKeptForTheSameKindAndCount() throws {
        let kernel = FakeVFIOKernel()
        let first = try openEdu(kernel)
        let firstVectors = try first.enableInterrupts(.msi, count: 1)
        var handed = try first.handoverDescriptors()
        #expect(handed.interruptKind == .msi && handed.interruptFDs == [firstVectors[0].fd])
        handed.interruptFDs = handed.interruptFDs.map { dup($0) }
        var owned = false
        let second = try VFIODevice(eduAddress, adopting: handed, owned: &owned, system: kernel)
        try second.takeOver()
        let setsBefore = kernel.calls.filter { $0.contains("SET_IRQS") }.count
        let vectors = try second.enableInterrupts(.msi, count: 1)
        #expect(second.keptHandedInterrupts)
        #expect(kernel.calls.filter { $0.contains("SET_IRQS") }.count == setsBefore, "no VFIO_DEVICE_SET_IRQS")
        #expect(kernel.interrupt(index: 1), "VFIO still signals the holder's eventfd")
        #expect(fired(vectors[0]), "which the successor reads")
        second.close()
        first.close()

        // Another kind: the handed eventfds are closed and new ones set.
        let other = FakeVFIOKernel()
        let third = try openEdu(other)
        _ = try third.enableInterrupts(.msi, count: 1)
        var again = try third.handoverDescriptors()
        let copy = fcntl(again.interruptFDs[0], F_DUPFD_CLOEXEC, 5000)  // a number no new eventfd takes
        again.interruptFDs = [copy]
        var thirdOwned = false
        let fourth = try VFIODevice(eduAddress, adopting: again, owned: &thirdOwned, system: other)
        try fourth.takeOver()
        _ = try fourth.enableInterrupts(.intx, count: 1)
        #expect(!fourth.keptHandedInterrupts)
        #expect(fcntl(copy, F_GETFD) == -1, "the unused handed eventfd was closed")
        fourth.close()
        third.close()
    }

    @Test func handoverMessagesParseAndBadOnesAreNamed() {
        let message = VFIOHandoverMessage(role: .device, address: eduAddress, group: 7, window: 0x10_0000..<0x800_0000)
        var why = ""
        #expect(VFIOHandoverMessage.parse(message.text, why: &why) == message)
        #expect(message.text == "modeless-vfio-handover 1 device 0000:00:03.0 7 100000-8000000")
        let vector = VFIOHandoverMessage(role: .interrupt, address: eduAddress, group: 7, window: 0x10_0000..<0x800_0000, vector: (.msix, 1))
        #expect(vector.text == "modeless-vfio-handover 1 interrupt 0000:00:03.0 7 100000-8000000 msix/1")
        #expect(VFIOHandoverMessage.parse(vector.text, why: &why) == vector)
        for (text, reason) in [("hello", "not a VFIO handover message"),
                               ("modeless-vfio-handover 1 device 0000:00:03.0 7", "not a VFIO handover message"),
                               ("modeless-vfio-handover 2 device 0000:00:03.0 7 0-1", "handover version 2"),
                               ("modeless-vfio-handover 1 disk 0000:00:03.0 7 0-1", "unknown descriptor role"),
                               ("modeless-vfio-handover 1 device 00:zz 7 0-1", "bad PCI address"),
                               ("modeless-vfio-handover 1 device 0000:00:03.0 -1 0-1", "bad IOMMU group"),
                               ("modeless-vfio-handover 1 device 0000:00:03.0 7 5-5", "bad IOVA window"),
                               ("modeless-vfio-handover 1 device 0000:00:03.0 7 x", "bad IOVA window"),
                               ("modeless-vfio-handover 1 device 0000:00:03.0 7 0-1 msi/0", "not a VFIO handover message"),
                               ("modeless-vfio-handover 1 interrupt 0000:00:03.0 7 0-1", "needs its MSI or MSI-X vector"),
                               ("modeless-vfio-handover 1 interrupt 0000:00:03.0 7 0-1 intx/0", "needs its MSI or MSI-X vector"),
                               ("modeless-vfio-handover 1 interrupt 0000:00:03.0 7 0-1 msix/-1", "needs its MSI or MSI-X vector")] {
            why = ""
            #expect(VFIOHandoverMessage.parse(text, why: &why) == nil)
            #expect(why.contains(reason), "\(text): \(why)")
        }
    }

    /// The pipes a fake server sent, as /proc/self/fd names them (`pipe:[INODE]`).
    final class SentPipes: @unchecked Sendable {
        private let lock = ConditionLock()
        private var names: [String] = []
        func add(_ fd: Int32) {
            var status = stat()
            guard fstat(fd, &status) == 0 else { return }
            lock.withLock { names.append("pipe:[\(status.st_ino)]") }
        }
        var all: [String] { lock.withLock { names } }
    }

    /// A server that sends three messages, each with a pipe's read end, then closes.
    static func serve(_ messages: [String], at path: String, sent: SentPipes = SentPipes()) throws -> SystemThread {
        let listener = try UnixSocket.listen(at: path)
        return try SystemThread(name: "fake handover") {
            defer { listener.close() }
            guard let connection = try? listener.accept() else { return }
            defer { connection.close() }
            for text in messages {
                var ends: [Int32] = [0, 0]
                guard pipe(&ends) == 0 else { return }
                defer { close(ends[0]); close(ends[1]) }
                sent.add(ends[0])
                let bytes = Array(text.utf8)
                guard (try? bytes.withUnsafeBytes({ try connection.send($0, attaching: ends[0]) })) != nil else { return }
            }
        }
    }

    static func socketPath(_ name: String) -> String { "/tmp/modeless-handover-test-\(getpid())-\(name)" }

    @Test func descriptorsThatAreNotVFIOAreRefusedAndClosed() throws {
        let path = Self.socketPath("pipes")
        defer { unlink(path) }
        let messages = VFIOHandoverMessage.Role.required.map { VFIOHandoverMessage(role: $0, address: eduAddress, group: 3, window: 1..<2).text }
        let sent = SentPipes()
        let server = try Self.serve(messages, at: path, sent: sent)
        let error = #expect(throws: DeviceError.self) { _ = try VFIOHandover.receive(from: path, address: eduAddress, group: 3) }
        server.join()
        #expect(error?.message.contains("the container descriptor is pipe:") == true, "\(error?.message ?? "")")
        #expect(!sent.all.isEmpty)
        #expect(Self.openDescriptors().isDisjoint(with: sent.all), "every descriptor received was closed")
    }

    @Test func descriptorsOfAnotherDeviceOrGroupAreRefused() throws {
        let other = PCIAddress("0000:00:04.0")!
        for (address, group, expected) in [(other, 3, "offers the container of 0000:00:04.0 in group 3"),
                                           (eduAddress, 9, "offers the container of 0000:00:03.0 in group 9")] {
            let path = Self.socketPath("other-\(group)")
            defer { unlink(path) }
            let server = try Self.serve([VFIOHandoverMessage(role: .container, address: address, group: group, window: 1..<2).text], at: path)
            let error = #expect(throws: DeviceError.self) { _ = try VFIOHandover.receive(from: path, address: eduAddress, group: 3) }
            server.join()
            #expect(error?.message.contains(expected) == true, "\(error?.message ?? "")")
        }
    }

    @Test func noServerMeansNoHandover() {
        let error = #expect(throws: DeviceError.self) {
            _ = try VFIOHandover.receive(from: Self.socketPath("absent"), address: eduAddress, group: 3)
        }
        #expect(error != nil)
    }

    @Test func offeredDescriptorsAreTakenOnceAndReplacedOnesClosed() throws {
        func pipeEnds() -> (Int32, Int32) {
            var ends: [Int32] = [0, 0]
            _ = pipe(&ends)
            return (ends[0], ends[1])
        }
        let address = PCIAddress("0000:00:0a.0")!
        let (a, b) = pipeEnds(), (c, d) = pipeEnds(), (e, f) = pipeEnds()
        let first = VFIODescriptors(address: address, group: 1, container: a, groupFD: b, device: c, window: 1..<2)
        VFIOHandover.offer(first)
        VFIOHandover.offer(VFIODescriptors(address: address, group: 1, container: d, groupFD: e, device: f, window: 1..<2))
        #expect(fcntl(a, F_GETFD) == -1 && fcntl(c, F_GETFD) == -1, "the replaced descriptors were closed")
        #expect(VFIOHandover.isOffered(address))
        #expect(VFIOHandover.take(address)?.container == d)
        #expect(VFIOHandover.take(address) == nil)
        VFIODescriptors(address: address, group: 1, container: d, groupFD: e, device: f, window: 1..<2).close()
        #expect(fcntl(d, F_GETFD) == -1)
    }

    /// A sysfs with one function whose driver and IOMMU group links say vfio-pci and group `group`.
    static func sysfs(group: Int) throws -> String {
        var template = Array("/tmp/modeless-handover-sysfs-XXXXXX".utf8CString)
        let root = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        let function = "\(root)/bus/pci/devices/\(eduAddress)"
        try FileAccess.createDirectories(function)
        try FileAccess.createDirectories("\(root)/bus/pci/drivers/vfio-pci")
        try FileAccess.createDirectories("\(root)/kernel/iommu_groups/\(group)")
        #expect(symlink("\(root)/bus/pci/drivers/vfio-pci", "\(function)/driver") == 0)
        #expect(symlink("\(root)/kernel/iommu_groups/\(group)", "\(function)/iommu_group") == 0)
        return root
    }

    @Test func openingAHandedOverFunctionAdoptsItsDescriptors() throws {
        let root = try Self.sysfs(group: 3)
        defer { _ = try? ProgramRunner.run("/bin/rm", ["-rf", root]) }
        let kernel = FakeVFIOKernel()
        let first = try openEdu(kernel)
        VFIOHandover.offer(try first.handoverDescriptors())
        let opensBefore = kernel.calls.filter { $0.hasPrefix("open ") }.count
        let second = try VFIODevice(eduAddress, bus: PCIBus(sysfsRoot: root), system: kernel)
        #expect(second.adopted && !second.adoptionSteps.isEmpty)
        #expect(kernel.calls.filter { $0.hasPrefix("open ") }.count == opensBefore)
        #expect(!VFIOHandover.isOffered(eduAddress) && VFIOHandover.refusal(for: eduAddress) == nil)
        second.close()
    }

    @Test func adoptionAheadLeavesTheHolderRunningUntilTheTakeover() throws {
        let root = try Self.sysfs(group: 3)
        defer { _ = try? ProgramRunner.run("/bin/rm", ["-rf", root]) }
        let kernel = FakeVFIOKernel()
        let first = try openEdu(kernel)
        try first.config.setBusMastering(true)
        let handed = try first.handoverDescriptors()
        VFIOHandover.offer(handed)
        let second = try #require(VFIODevice.adoptAhead(eduAddress, options: .init(dmaAddressBits: 28), bus: PCIBus(sysfsRoot: root), system: kernel))
        #expect(!VFIOHandover.isOffered(eduAddress) && VFIOHandover.refusal(for: eduAddress) == nil)
        #expect(second.adopted && second.mapsDMA)
        #expect(try second.config.command().contains(.busMaster), "the holder's device keeps running")
        #expect(second.removal == nil, "the holder keeps the device request interrupt")
        let early = try second.allocateDMA(size: 4096)
        #expect(!handed.window.contains(early.deviceAddress), "mapped ahead outside the holder's window")
        try second.takeOver()
        #expect(try second.config.command().contains(.busMaster) == false)
        #expect(second.removal != nil)
        #expect(kernel.iommuMappings[early.deviceAddress] == 4096, "what was mapped ahead stays mapped")
        try second.takeOver()  // once only: nothing more happens
        second.close()
        first.close()
        #expect(kernel.openDescriptors.isEmpty)
        #expect(VFIODevice.adoptAhead(eduAddress, bus: PCIBus(sysfsRoot: root), system: kernel) == nil, "nothing offered: nothing adopted")
    }

    @Test func aHolderWindowLeavingNoRoomMapsNothingBeforeTheTakeover() throws {
        let kernel = FakeVFIOKernel()
        let first = try openEdu(kernel)
        let holders = try first.allocateDMA(size: 8192)
        var handed = try first.handoverDescriptors()
        handed.window = (1 << 20)..<(1 << 28)
        var owned = false
        let second = try VFIODevice(eduAddress, adopting: handed, owned: &owned, options: .init(dmaAddressBits: 28), system: kernel)
        #expect(!second.mapsDMA)
        let refusal = #expect(throws: DeviceError.self) { _ = try second.allocateDMA(size: 4096) }
        #expect(refusal?.message.contains("before the adopted device is taken over") == true)
        #expect(kernel.iommuMappings.count == 1, "the holder's mapping stays while it may run")
        try second.takeOver()
        #expect(kernel.iommuMappings.isEmpty, "every mapping removed once the holder is gone")
        #expect(second.mapsDMA)
        let buffer = try second.allocateDMA(size: 4096)
        #expect(kernel.iommuMappings[buffer.deviceAddress] == 4096)
        second.close()
        first.close()
        _ = holders
    }

    @Test func descriptorsOfAnotherGroupAreClosedWithAClearReason() throws {
        let root = try Self.sysfs(group: 3)
        defer { _ = try? ProgramRunner.run("/bin/rm", ["-rf", root]) }
        let kernel = FakeVFIOKernel()
        let first = try openEdu(kernel)
        var handed = try first.handoverDescriptors()
        handed.group = 9
        VFIOHandover.offer(handed)
        // The fallback opens the function anew, which this sysfs cannot describe fully.
        #expect(throws: DeviceError.self) { _ = try VFIODevice(eduAddress, bus: PCIBus(sysfsRoot: root), system: kernel) }
        #expect(VFIOHandover.refusal(for: eduAddress)?.contains("descriptors are of IOMMU group 9, the device is in group 3") == true)
        #expect(kernel.openDescriptors.isEmpty, "the refused descriptors were closed")
        #expect(!VFIOHandover.isOffered(eduAddress))
    }

    @Test func theServerHandsTheSameOpenFilesToEveryConnectionUntilStopped() throws {
        var ends: [[Int32]] = []
        for _ in 0..<3 {
            var pair: [Int32] = [0, 0]
            try #require(pipe(&pair) == 0)
            ends.append(pair)
        }
        defer { ends.joined().forEach { close($0) } }
        let window: Range<UInt64> = 0x10_0000..<0x40_0000_0000
        let offered = VFIODescriptors(address: eduAddress, group: 3, container: ends[0][0], groupFD: ends[1][0], device: ends[2][0], window: window)
        let path = Self.socketPath("server")
        try FileAccess.replaceFile(path, with: Array("stale".utf8))  // a file left by a server that died: replaced
        let server = try VFIOHandoverServer(descriptors: offered, path: path)
        func pipeName(_ fd: Int32) -> String { (try? FileAccess.readLink("/proc/self/fd/\(fd)")) ?? "?" }
        for round in 1...2 {
            let received = try VFIOHandover.receive(from: path, address: eduAddress, group: 3) { role in
                pipeName(role == .container ? ends[0][0] : role == .group ? ends[1][0] : ends[2][0])
            }
            defer { received.close() }
            #expect(received.window == window)
            #expect(received.container != ends[0][0], "a copy, not the server's own descriptor")
            // The same open pipe: what goes in at the server's write end comes out of the copy.
            var byte = UInt8(round)
            #expect(write(ends[2][1], &byte, 1) == 1)
            var read: UInt8 = 0
            #expect(Glibc.read(received.device, &read, 1) == 1 && read == UInt8(round))
        }
        #expect(server.handedOver == 2)
        server.stop()
        #expect(!FileAccess.exists(path), "stopping removes the socket")
        #expect(throws: DeviceError.self) { _ = try VFIOHandover.receive(from: path, address: eduAddress, group: 3) }
        for fd in ends.joined() { #expect(fcntl(fd, F_GETFD) != -1, "the server leaves its owner's descriptors open") }
    }
}
