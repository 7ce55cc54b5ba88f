import Glibc
import ModelessBus
@testable import ModelessDevice
import ModelessSystem
import Testing

/// The device request interrupt (VFIO_PCI_REQ_IRQ_INDEX): registered when a device is opened,
/// so that the kernel's unbind or hot-unplug reaches the driver; unregistered when it is closed.
@Suite struct VFIORemovalTests {
    @Test func openingRegistersTheRequestInterruptAndClosingRemovesIt() throws {
        let kernel = FakeVFIOKernel()
        let device = try openEdu(kernel)
        let removal = try #require(device.removal)
        #expect(kernel.state.withLock { $0.irqTriggers[VFIODevice.requestIRQIndex] } == [removal.fd])
        #expect(removal.reportedCause == nil)
        device.close()
        #expect(kernel.state.withLock { $0.irqTriggers[VFIODevice.requestIRQIndex] } == nil)
    }

    /// The kernel signals the eventfd without a cause: the device's owner reads it as a
    /// requested removal. A driver's own report of a surprise removal comes first when it does.
    @Test func theKernelsRequestReadsAsARequestedRemoval() throws {
        let kernel = FakeVFIOKernel()
        let device = try openEdu(kernel)
        defer { device.close() }
        let removal = try #require(device.removal)
        #expect(removal.take() == nil, "nothing was signalled")
        #expect(kernel.interrupt(index: VFIODevice.requestIRQIndex))
        var descriptor = pollfd(fd: removal.fd, events: Int16(POLLIN), revents: 0)
        #expect(poll(&descriptor, 1, 2000) == 1)
        #expect(removal.take() == .requested)
        removal.report(.surprise("later"))
        #expect(removal.reportedCause == .requested, "the first cause is kept")
    }

    @Test func aSurpriseReportedFirstIsKept() throws {
        let removal = try DeviceRemoval()
        removal.report(.surprise("CSTS reads all-ones"))
        removal.request()
        #expect(removal.take() == .surprise("CSTS reads all-ones"))
        #expect(RemovalCause.surprise("CSTS reads all-ones").description.hasPrefix("device removed"))
        #expect(RemovalCause.requested.description.hasPrefix("device removed"))
    }

    @Test func aKernelWithoutTheRequestInterruptFailsNothing() throws {
        let kernel = FakeVFIOKernel()
        kernel.state.withLock { $0.requestInterruptOffered = false }
        let device = try openEdu(kernel)
        #expect(device.removal == nil)
        device.close()
    }

    @Test func aFailedRegistrationFailsTheOpenAndReleasesEverything() throws {
        let kernel = FakeVFIOKernel()
        kernel.fail("VFIO_DEVICE_SET_IRQS", with: .resourceBusy)
        #expect(throws: DeviceError.self) { _ = try openEdu(kernel) }
        #expect(kernel.openDescriptors.isEmpty)
        #expect(kernel.deviceMappingCount == 0)
    }
}
