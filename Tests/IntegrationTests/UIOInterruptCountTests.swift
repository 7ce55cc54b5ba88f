import Glibc
import ModelessBus
import ModelessDevice
import ModelessSystem
import Testing

extension VM {
    /// `/dev/uioN` counts every interrupt since the bind; a device opened again in the same bind
    /// must count only its own.
    @Suite("UIO interrupt counts")
    struct UIOInterruptCountTests {
        @Test func aDeviceOpenedAgainCountsOnlyItsOwnInterrupts() throws {
            let edu = try TestBench.edu()
            let binder = PCIBinder()
            _ = try binder.bind(.address(edu), to: .uioPCIGeneric)
            defer { _ = try? binder.unbind(.address(edu)) }
            for run in 1...2 {
                let device = try DeviceOpener.open(edu)
                defer { device.close() }
                let bar = try device.region(0)
                let vector = try #require(try device.enableInterrupts(.intx, count: 1).first)
                for round in 1...3 {
                    try bar.write32(UInt32(round), at: Edu.raiseInterrupt)
                    var descriptor = pollfd(fd: vector.fd, events: Int16(POLLIN), revents: 0)
                    #expect(poll(&descriptor, 1, 10_000) == 1, "run \(run) round \(round): INTx never arrived")
                    #expect(try vector.wait() == 1, "run \(run) round \(round): one interrupt, not earlier runs' too")
                    try bar.write32(UInt32(round), at: Edu.acknowledgeInterrupt)
                    try vector.acknowledge()
                }
                try device.disableInterrupts()
            }
        }
    }
}
