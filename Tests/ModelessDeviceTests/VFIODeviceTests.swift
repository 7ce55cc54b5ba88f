import Glibc
import ModelessBus
@testable import ModelessDevice
import ModelessSystem
import Testing

let eduAddress = PCIAddress("0000:00:03.0")!

func openEdu(_ kernel: FakeVFIOKernel, bits: Int = 28) throws -> VFIODevice {
    try VFIODevice(eduAddress, group: 3, options: .init(dmaAddressBits: bits), system: kernel)
}

func fired(_ vector: InterruptVector) -> Bool {
    var descriptor = pollfd(fd: vector.fd, events: Int16(POLLIN), revents: 0)
    return poll(&descriptor, 1, 2000) == 1 && ((try? vector.wait()) ?? 0) >= 1
}

/// The VFIO backend's own code paths, against an in-process VFIO kernel.
@Suite struct VFIODeviceTests {
    @Test func opensMapsAndReadsRegisters() throws {
        let kernel = FakeVFIOKernel()
        let device = try openEdu(kernel)
        #expect(kernel.openDescriptors == ["container", "device 0000:00:03.0", "group"])
        let bar = try device.region(0)
        #expect(bar.size == 1 << 20 && bar.isMemoryMapped)
        #expect(try bar.read32(at: 0) == 0x0100_00ed)
        try bar.write64(0xdead_beef_0000_0001, at: 0x80)
        #expect(try bar.read64(at: 0x80) == 0xdead_beef_0000_0001)
        #expect(try device.config.snapshot().vendorID == 0x1234)
        #expect(try device.config.snapshot().interrupts.msi?.vectors == 1)
        #expect(device.vectorCount(.intx) == 1 && device.vectorCount(.msi) == 1 && device.vectorCount(.msix) == 0)
        device.close()
        #expect(kernel.openDescriptors.isEmpty)
        #expect(kernel.deviceMappingCount == 0)
    }

    @Test func accessesOutsideARegionAreErrors() throws {
        let device = try openEdu(FakeVFIOKernel())
        let bar = try device.region(0)
        for (offset, width) in [(1 << 20, 4), ((1 << 20) - 2, 4), (-1, 1), (6, 4), (4, 8)] {
            let error = #expect(throws: DeviceError.self) {
                switch width {
                case 1: _ = try bar.read8(at: offset)
                case 4: _ = try bar.read32(at: offset)
                default: _ = try bar.read64(at: offset)
                }
            }
            #expect(error?.kind == .outOfRange)
        }
        #expect(throws: DeviceError.self) { try device.region(2) }
        #expect(throws: DeviceError.self) { try device.config.read16(at: 255) }
        device.close()
        let closed = #expect(throws: DeviceError.self) { try bar.read32(at: 0) }
        #expect(closed?.kind == .closed)
    }

    @Test func commandRegisterBits() throws {
        let device = try openEdu(FakeVFIOKernel())
        try device.config.setBusMastering(true)
        try device.config.setINTxDisabled(true)
        #expect(try device.config.command() == [.busMaster, .interruptDisable])
        try device.config.setINTxDisabled(false)
        #expect(try device.config.command() == [.busMaster])
    }

    @Test func msiArrivesOnItsEventfdAndLoopsBack() throws {
        let kernel = FakeVFIOKernel()
        let device = try openEdu(kernel)
        let vector = try #require(try device.enableInterrupts(.msi, count: 1).first)
        #expect(kernel.interrupt(index: 1))
        #expect(fired(vector))
        try vector.trigger()
        #expect(fired(vector))
        try vector.acknowledge()
        #expect(kernel.unmasks == 0, "MSI needs no unmask")
        try device.disableInterrupts()
        #expect(!kernel.interrupt(index: 1))
    }

    @Test func intxIsUnmaskedOnAcknowledge() throws {
        let kernel = FakeVFIOKernel()
        let device = try openEdu(kernel)
        let vector = try #require(try device.enableInterrupts(.intx, count: 1).first)
        #expect(kernel.interrupt(index: 0))
        #expect(fired(vector))
        try vector.acknowledge()
        #expect(kernel.unmasks == 1)
    }

    @Test func askingForMoreVectorsThanOfferedIsAnError() throws {
        let device = try openEdu(FakeVFIOKernel())
        let error = #expect(throws: DeviceError.self) { try device.enableInterrupts(.msix, count: 4) }
        #expect(error?.kind == .unsupported)
        #expect(error?.message.contains("offers 0 msix") == true)
    }

    @Test func dmaBuffersGetDistinctAlignedAddressesBelowTheMask() throws {
        let kernel = FakeVFIOKernel()
        let device = try openEdu(kernel, bits: 28)
        let buffers = try (0..<8).map { _ in try device.allocateDMA(size: 5000) }
        #expect(Set(buffers.map(\.deviceAddress)).count == 8)
        for buffer in buffers {
            #expect(buffer.size == 8192)
            #expect(buffer.deviceAddress % 4096 == 0)
            #expect(buffer.deviceAddress + UInt64(buffer.size) <= 1 << 28)
            #expect(kernel.iommuMappings[buffer.deviceAddress] == 8192)
        }
        try buffers[0].write([1, 2, 3], at: 8189)
        #expect(try buffers[0].read(3, at: 8189) == [1, 2, 3])
        #expect(throws: DeviceError.self) { try buffers[0].write([1, 2, 3, 4], at: 8189) }
        buffers[0].free()
        #expect(kernel.iommuMappings.count == 7)
        device.close()
        #expect(kernel.iommuMappings.isEmpty)
        #expect(buffers[1].isFreed)
    }

    @Test func aDeviceWithATinyDMAWindowRunsOutCleanly() throws {
        let kernel = FakeVFIOKernel()
        let device = try openEdu(kernel, bits: 21)  // 1 MiB of addresses above the first MiB
        // The top quarter of them is the kept region (allocateKeptDMA), the rest the window.
        #expect(device.keptRegion == ((1 << 21) - (1 << 18))..<(1 << 21))
        var buffers: [DMABuffer] = []
        for _ in 0..<192 { buffers.append(try device.allocateDMA(size: 4096)) }
        let error = #expect(throws: DeviceError.self) { try device.allocateDMA(size: 4096) }
        #expect(error?.kind == .outOfDeviceAddresses)
        buffers.removeLast()
        #expect(try device.allocateDMA(size: 4096).deviceAddress == device.keptRegion.lowerBound - 4096)
    }

    /// Each failing step reports the operation, the device and errno, and releases every
    /// descriptor and mapping opened before it.
    @Test(arguments: ["open /dev/vfio/vfio", "open /dev/vfio/3", "VFIO_GROUP_GET_STATUS", "VFIO_GROUP_SET_CONTAINER",
                      "VFIO_SET_IOMMU", "VFIO_GROUP_GET_DEVICE_FD", "VFIO_DEVICE_GET_INFO",
                      "VFIO_DEVICE_GET_REGION_INFO", "mmap device", "VFIO_DEVICE_GET_IRQ_INFO"])
    func failedOpenReleasesEverything(_ step: String) throws {
        let kernel = FakeVFIOKernel()
        kernel.fail(step, with: .resourceBusy)
        let error = #expect(throws: DeviceError.self) { try openEdu(kernel) }
        #expect(error?.kind == .system)
        #expect(error?.description.contains("0000:00:03.0") == true)
        #expect(error?.systemError?.errno == .resourceBusy)
        let operation = step.hasPrefix("open") ? "open" : step.hasPrefix("mmap") ? "mmap" : step
        #expect(error?.systemError?.operation == operation)
        #expect(kernel.openDescriptors.isEmpty)
        #expect(kernel.deviceMappingCount == 0)
    }

    @Test func aGroupThatIsNotViableIsRefused() throws {
        let kernel = FakeVFIOKernel()
        kernel.setGroupViable(false)
        let error = #expect(throws: DeviceError.self) { try openEdu(kernel) }
        #expect(error?.kind == .groupNotViable)
        #expect(kernel.openDescriptors.isEmpty)
    }

    @Test func failedInterruptSetupClosesItsEventfds() throws {
        let kernel = FakeVFIOKernel()
        let device = try openEdu(kernel)
        let open = kernel.openEventfds  // The device request interrupt's, while the device is open.
        kernel.fail("VFIO_DEVICE_SET_IRQS", with: .invalidArgument)
        #expect(throws: DeviceError.self) { try device.enableInterrupts(.msi, count: 1) }
        #expect(kernel.openEventfds == open)
        device.close()
        #expect(kernel.openEventfds == 0)
    }

    @Test func failedIOMMUMappingReleasesTheMemoryAndAddress() throws {
        let kernel = FakeVFIOKernel()
        let device = try openEdu(kernel)
        kernel.fail("VFIO_IOMMU_MAP_DMA", with: .noMemory)
        let error = #expect(throws: DeviceError.self) { try device.allocateDMA(size: 4096) }
        #expect(error?.systemError?.operation == "VFIO_IOMMU_MAP_DMA")
        #expect(device.liveDMABufferCount == 0)
        #expect(try device.allocateDMA(size: 4096).deviceAddress == 1 << 20)
    }

    @Test func closeIsIdempotentAndEndsEverything() throws {
        let kernel = FakeVFIOKernel()
        let device = try openEdu(kernel)
        _ = try device.enableInterrupts(.msi, count: 1)
        let buffer = try device.allocateDMA(size: 4096)
        device.close()
        device.close()
        #expect(kernel.openDescriptors.isEmpty)
        #expect(kernel.iommuMappings.isEmpty)
        #expect(kernel.openEventfds == 0)
        #expect(throws: DeviceError.self) { try buffer.load32(at: 0) }
        #expect(throws: DeviceError.self) { try device.allocateDMA(size: 4096) }
        #expect(throws: DeviceError.self) { try device.enableInterrupts(.msi, count: 1) }
    }

    @Test func openCloseHundredTimesKeepsDescriptorsFlat() throws {
        let kernel = FakeVFIOKernel()
        for _ in 0..<100 {
            let device = try openEdu(kernel)
            _ = try device.enableInterrupts(.msi, count: 1)
            _ = try device.allocateDMA(size: 4096)
            device.close()
        }
        #expect(kernel.openEventfds == 0)
        #expect(kernel.openDescriptors.isEmpty && kernel.deviceMappingCount == 0 && kernel.iommuMappings.isEmpty)
    }
}

@Suite struct IOVAAllocatorTests {
    @Test func allocatesAlignedFirstFitAndMerges() {
        var allocator = IOVAAllocator(start: 0x1000, limit: 0x10_0000)
        let a = allocator.allocate(size: 0x1000, alignment: 0x1000)
        let b = allocator.allocate(size: 0x2000, alignment: 0x2000)
        let c = allocator.allocate(size: 0x1000, alignment: 0x1000)
        #expect(a == 0x1000 && b == 0x2000 && c == 0x4000)
        allocator.release(b!, size: 0x2000)
        allocator.release(a!, size: 0x1000)
        allocator.release(c!, size: 0x1000)
        #expect(allocator.free == [0x1000..<0x10_0000])
    }

    @Test func respectsTheLimit() {
        var allocator = IOVAAllocator(addressBits: 21)
        #expect(allocator.allocate(size: 2 << 20, alignment: 4096) == nil)
        #expect(allocator.allocate(size: 1 << 20, alignment: 4096) == 1 << 20)
        #expect(allocator.allocate(size: 4096, alignment: 4096) == nil)
    }

    @Test func hugeAlignmentSkipsAhead() {
        var allocator = IOVAAllocator(addressBits: 32)
        _ = allocator.allocate(size: 4096, alignment: 4096)
        #expect(allocator.allocate(size: 2 << 20, alignment: 2 << 20) == 2 << 20)
        #expect(allocator.free.first == UInt64((1 << 20) + 4096)..<UInt64(2 << 20))
    }
}

/// A register file that records every access, standing in for a device model.
final class RecordingRegisters: RegisterFile, @unchecked Sendable {
    var accesses: [String] = []
    func read(at offset: Int, width: Int) -> UInt64 {
        accesses.append("r\(width * 8)@\(offset)")
        return UInt64(offset)
    }
    func write(at offset: Int, width: Int, value: UInt64) {
        accesses.append("w\(width * 8)@\(offset)=\(value)")
    }
}

@Suite struct EmulatedRegionTests {
    @Test func accessesReachTheRegisterFileWithTheirWidths() throws {
        let registers = RecordingRegisters()
        let region = MMIORegion.emulated(index: 0, size: 64, device: eduAddress, registers: registers)
        #expect(try region.read16(at: 2) == 2)
        try region.write8(7, at: 63)
        try region.write64(9, at: 56)
        #expect(throws: DeviceError.self) { try region.write64(9, at: 60) }
        #expect(registers.accesses == ["r16@2", "w8@63=7", "w64@56=9"])
    }
}
