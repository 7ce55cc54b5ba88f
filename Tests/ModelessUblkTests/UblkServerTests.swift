import CLibURing
import ModelessLogical
import ModelessSystem
@testable import ModelessUblk
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A fresh private container directory for one test (short, to fit a socket path).
private func temporaryContainerDirectory() -> ContainerDirectory {
    var template = Array("/tmp/mlu-XXXXXX".utf8CString)
    let path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    return ContainerDirectory(path: path + "/containers")
}

@Suite("ublk server pieces that need no kernel driver")
struct UblkServerTests {
    @Test func theKernelsNumbersAreTheOnesOfItsHeader() {
        // _IOWR('u', 0x04, 32-byte struct): direction 3, size 32, type 'u', number 4.
        #expect(UblkControlCommand.addDevice.encoded == 0xC020_7504)
        #expect(UblkControlCommand.getFeatures.encoded == 0x8020_7513)
        // _IOWR('u', 0x20, 16-byte struct ublksrv_io_cmd).
        #expect(UblkIOCommand.fetch.encoded == 0xC010_7520)
        #expect(MemoryLayout<ublksrv_ctrl_cmd>.size == 32)
        #expect(MemoryLayout<ublksrv_ctrl_dev_info>.size == 64)
        #expect(MemoryLayout<ublksrv_io_desc>.size == 24)
        #expect(UblkInterface.descriptorOffset(queue: 1, pageSize: 4096) == 98_304)
    }

    @Test func parametersDescribeTheGeometry() {
        let geometry = UblkGeometry(blockSize: 4096, blockCount: 1000, flushes: true, writesZeroes: true, discards: false)
        let parameters = UblkExport.makeParameters(geometry, maximumIOBytes: 16384)
        #expect(parameters.types == 0b11)
        #expect(parameters.basic.logical_bs_shift == 12)
        #expect(parameters.basic.dev_sectors == 8000)
        #expect(parameters.basic.max_sectors == 32)
        #expect(parameters.basic.attrs == 1 << 2, "a volatile cache, so that the kernel sends flushes")
        #expect(parameters.discard.max_discard_sectors == 0)
        #expect(parameters.discard.max_write_zeroes_sectors == 32)
        let plain = UblkExport.makeParameters(
            UblkGeometry(blockSize: 512, blockCount: 8, flushes: false, writesZeroes: false, discards: false), maximumIOBytes: 4096)
        #expect(plain.types == 0b1)
        #expect(plain.basic.attrs == 0)
    }

    @Test(arguments: [0, 4097, -1])
    func queueDepthsTheKernelRefusesAreRefusedFirst(_ depth: Int) {
        #expect(throws: UblkError.self) { try UblkConfiguration(queues: 1, queueDepth: depth).validate() }
        do {
            try UblkConfiguration(queues: 1, queueDepth: depth).validate()
        } catch {
            #expect(error.kind == .invalidArgument)
            #expect(error.message.contains("1-4096"))
        }
    }

    @Test func withoutTheDriverTheErrorSaysToLoadIt() throws {
        try #require(!FileAccess.exists(UblkInterface.controlPath), "this machine has the ublk driver loaded")
        do {
            _ = try UblkControl()
            Issue.record("opened a control device that does not exist")
        } catch {
            #expect(error.kind == .driverUnavailable)
            #expect(error.message.contains("modprobe ublk_drv"))
        }
    }

    @Test func aSecondExportOfTheSameDeviceIsRefused() throws {
        let directory = temporaryContainerDirectory()
        let name = try LogicalDeviceName(container: "memory", device: "blk0")
        let first = try ExportLock(device: name, containers: directory)
        first.record("as /dev/ublkb7 by process 1")
        do {
            _ = try ExportLock(device: name, containers: directory)
            Issue.record("a second claim succeeded")
        } catch {
            #expect(error.kind == .alreadyExported)
            #expect(error.message.contains("/dev/ublkb7"))
        }
        first.release()
        let again = try ExportLock(device: name, containers: directory)
        again.release()
    }

    /// A holder that died leaves its record (the ublk device to recover) for the next claim;
    /// one that released its claim leaves none, and the next start adds a new device.
    @Test func aDeadHoldersRecordIsLeftForItsSuccessor() throws {
        let directory = temporaryContainerDirectory()
        let first = try ExportLock(claim: "nvme+0000:00:06.0", what: "NVMe controller 0000:00:06.0", containers: directory)
        #expect(first.previousRecord == "")
        first.record("ublk 3 as /dev/ublkb3 by process 42")
        do {
            _ = try ExportLock(claim: "nvme+0000:00:06.0", what: "NVMe controller 0000:00:06.0", containers: directory)
            Issue.record("a second claim succeeded")
        } catch {
            #expect(error.kind == .alreadyExported)
            #expect(error.message.contains("NVMe controller 0000:00:06.0") && error.message.contains("/dev/ublkb3"), "\(error.message)")
        }
        first.release()
        // A process killed while holding the claim: its lock went with it, its record stayed.
        try FileAccess.replaceFile(first.path, with: Array("ublk 3 as /dev/ublkb3 by process 42\n".utf8))
        let successor = try ExportLock(claim: "nvme+0000:00:06.0", what: "NVMe controller 0000:00:06.0", containers: directory)
        #expect(successor.previousRecord == "ublk 3 as /dev/ublkb3 by process 42")
        // A successor that fails to come up keeps the record for the next attempt.
        successor.release(keepingRecord: true)
        let retry = try ExportLock(claim: "nvme+0000:00:06.0", what: "NVMe controller 0000:00:06.0", containers: directory)
        #expect(retry.previousRecord == "ublk 3 as /dev/ublkb3 by process 42")
        retry.release()
        let next = try ExportLock(claim: "nvme+0000:00:06.0", what: "NVMe controller 0000:00:06.0", containers: directory)
        #expect(next.previousRecord == "")
        next.release()
    }

    @Test func aMissingDeviceIsNamed() throws {
        let directory = temporaryContainerDirectory()
        let container = try LogicalContainer(name: "exporter", directory: directory, serving: false)
        defer { container.shutdown() }
        do {
            _ = try LogicalBlockBackend(device: "nowhere/blk0", container: container)
            Issue.record("a backend for a missing device")
        } catch {
            #expect(error.kind == .noSuchDevice)
            #expect(error.message.contains("nowhere"))
        }
    }

    /// The queue backend's requests against a memory disk in another container (this
    /// process): what each ublk operation becomes.
    @Test func operationsMapToBlockRequests() throws {
        let directory = temporaryContainerDirectory()
        let disk = MemoryDiskProvider(blockCount: 256, blockSize: 512)
        let provider = try LogicalContainer(name: "memory", directory: directory)
        defer { provider.shutdown() }
        _ = try provider.createDevice("blk0", handlers: disk.handlers)
        let consumer = try LogicalContainer(name: "exporter", directory: directory, serving: false)
        defer { consumer.shutdown() }
        let backend = try LogicalBlockBackend(device: "memory/blk0", container: consumer)
        #expect(backend.geometry == UblkGeometry(blockSize: 512, blockCount: 256, flushes: true, writesZeroes: true, discards: false))
        #expect(backend.maximumIOBytes == 16384, "the largest request whose four-block chain fits one message")
        let queue = try backend.makeQueueBackend(queue: 0)
        defer { queue.close() }

        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: backend.maximumIOBytes, alignment: 4096)
        defer { buffer.deallocate() }
        for index in 0..<8192 { buffer[index] = UInt8(truncatingIfNeeded: index * 7 + 3) }
        let written = Array(buffer[0..<8192])
        #expect(queue.perform(UblkRequest(operation: .write, flags: 0, startSector: 16, sectorCount: 16), buffer: buffer) == 8192)
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        #expect(queue.perform(UblkRequest(operation: .read, flags: 0, startSector: 16, sectorCount: 16), buffer: buffer) == 8192)
        #expect(Array(buffer[0..<8192]) == written)
        #expect(queue.perform(UblkRequest(operation: .flush, flags: 0, startSector: 0, sectorCount: 0), buffer: buffer) == 0)
        #expect(queue.perform(UblkRequest(operation: .flush, flags: 0, startSector: .max, sectorCount: 0), buffer: buffer) == 0,
                "a flush's sector means nothing (the kernel leaves it as it is)")
        #expect(queue.perform(UblkRequest(operation: .writeZeroes, flags: 0, startSector: 20, sectorCount: 4), buffer: buffer) == 0)
        #expect(queue.perform(UblkRequest(operation: .read, flags: 0, startSector: 16, sectorCount: 16), buffer: buffer) == 8192)
        #expect(Array(buffer[0..<2048]) == Array(written[0..<2048]))
        #expect(buffer[2048..<4096].allSatisfy { $0 == 0 }, "sectors 20-23 zeroed")
        #expect(Array(buffer[4096..<8192]) == Array(written[4096..<8192]))
        #expect(queue.perform(UblkRequest(operation: .discard, flags: 0, startSector: 0, sectorCount: 8), buffer: buffer) == -Errno.notSupported.rawValue)
        #expect(queue.perform(UblkRequest(operation: .read, flags: 0, startSector: 250, sectorCount: 16), buffer: buffer) == -Errno.ioError.rawValue,
                "beyond the end: the disk refuses, the kernel gets EIO")
    }
}
