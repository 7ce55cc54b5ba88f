import ModelessBus
import ModelessDevice
import ModelessDrivers
import ModelessRuntime
import Testing

extension VM {
    /// The e1000 driver on QEMU's 82574L (e1000e) with MSI-X, a vector per cause (receive,
    /// transmit, other, routed by IVAR) and one vector for all, in both modes: it pings the
    /// kernel's e1000 on the same hub and answers the kernel's pings. (INTx and MSI on the
    /// 82574L: "e1000 driver on the real NIC".)
    @Suite("e1000 MSI-X on the 82574L")
    struct E1000MSIXIntegrationTests {
        static let cases: [(ExecutionMode, E1000Driver.MSIXVectors)] = [(.user, .perCause), (.kernelEmulation, .perCause),
                                                                         (.user, .one), (.kernelEmulation, .one)]

        @Test(.enabled(if: E1000DriverIntegrationTests.e1000e != nil, "no e1000e (8086:10d3) on the bench's hub"), arguments: 0..<4)
        func pingsTheKernelWithMSIX(_ index: Int) throws {
            let (mode, vectors) = Self.cases[index]
            let bench = E1000DriverIntegrationTests()
            try bench.withBench(E1000DriverIntegrationTests.e1000e) { address in
                try bench.withDriver(address, mode, .interrupts(.msix), msixVectors: vectors) { driver, responder in
                    #expect(driver.variant == .i82574L)
                    #expect(driver.interruptScheme == (vectors == .perCause ? .msixPerCause : .msixShared))
                    let answered = try responder.ping(E1000DriverIntegrationTests.kernel, count: 3)
                    #expect(answered == 3, "the kernel answered our echo requests")
                    let pinged = try TestBench.shell("ip neigh flush all; busybox ping -c 3 -W 3 169.254.79.2")
                    #expect(pinged.status == 0, "\(pinged.output)")
                    #expect(driver.statistics.framesReceived > 0)
                }
            }
        }
    }
}
