import ModelessDevice
import ModelessDrivers
import ModelessModels
import ModelessRuntime
import ModelessSystem
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The e1000 driver with MSI-X on the 82574L model: a vector per cause or one for all, as
/// IVAR routes them, in both modes, under the driver verifier.
@Suite("The e1000 driver with MSI-X on the 82574L model")
struct E1000MSIXTests {
    static let cases: [(ExecutionMode, E1000Driver.MSIXVectors)] = [(.user, .perCause), (.kernelEmulation, .perCause),
                                                                     (.user, .one), (.kernelEmulation, .one)]
    /// IVAR with receive, transmit and other on vectors 0, 1, 2 (each entry valid), or all on 0.
    static let perCauseIVAR: UInt32 = 0x000A_0908, oneVectorIVAR: UInt32 = 0x0008_0808

    /// 100 frames through 32-descriptor rings (the sender waits for descriptors more than once),
    /// then two link changes: every frame arrives in order, the causes come on the vectors
    /// IVAR names, and the other causes' vector is re-armed after each link change.
    @Test(arguments: 0..<4)
    func framesAndLinkChangesComeOnTheVectorsIVARNames(_ index: Int) throws {
        let (mode, vectors) = Self.cases[index]
        let model = E1000Model(mac: [2, 0, 0, 0x74, 0x74, 0x0C], variant: .i82574L)
        let device = try ModeledDevice(model)
        defer { device.close() }
        try withVerifiedRuntime(mode) { runtime in
            let driver = try E1000Driver(device: device, runtime: runtime, receive: .interrupts(.msix), msixVectors: vectors)
            defer { driver.stop() }
            let received = Mutex<[[UInt8]]>([])
            driver.onFrame = { frame in received.withLock { $0.append(frame) } }
            let perCause = vectors == .perCause
            #expect(driver.interruptScheme == (perCause ? .msixPerCause : .msixShared))
            #expect(model.writes.last { $0.offset == 0xE4 }?.value == (perCause ? Self.perCauseIVAR : Self.oneVectorIVAR))

            model.loopback = true
            let frames = (0..<100).map { index in [UInt8](repeating: UInt8(index), count: 60 + index) }
            for frame in frames { try driver.send(frame) }
            for _ in 0..<10_000 where received.withLock({ $0.count }) + model.droppedFrames < 100 { usleep(1000) }
            let got = received.withLock { $0 }
            #expect(got.count + model.droppedFrames == 100 && got.count > 0)
            #expect(got == frames.filter { got.contains($0) }, "received in order, uncorrupted")

            for down in [true, false] {
                model.linkDown = down
                for _ in 0..<2000 where driver.linkUp == down { usleep(1000) }
                #expect(driver.linkUp == !down)
            }
            for _ in 0..<2000 where (model.msixInterrupts[perCause ? 2 : 0] ?? 0) < 2 { usleep(1000) }
            let raised = model.msixInterrupts
            #expect(raised[0, default: 0] > 0, "receive interrupts on vector 0: \(raised)")
            if perCause {
                #expect(raised[2, default: 0] >= 2, "each link change on vector 2, re-armed after the first: \(raised)")
                #expect(Set(raised.keys).isSubset(of: [0, 1, 2]), "\(raised)")
            } else {
                #expect(Array(raised.keys) == [0], "every cause on vector 0: \(raised)")
            }
            #expect(driver.failure == nil)
        }
    }

    /// MSI-X on the 82540EM (which has none) is refused before interrupts are enabled.
    @Test func msixIsRefusedOnThe82540EM() throws {
        let device = try ModeledDevice(E1000Model(variant: .i82540EM))
        defer { device.close() }
        try withVerifiedRuntime(.user) { runtime in
            #expect(throws: E1000Driver.Failure.self) {
                _ = try E1000Driver(device: device, runtime: runtime, receive: .interrupts(.msix))
            }
        }
    }
}
