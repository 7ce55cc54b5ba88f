import ModelessDevice
import ModelessDrivers
import ModelessModels
import ModelessRuntime
import Synchronization
import Testing

/// How the e1000 driver starts and fails: a NIC that does not answer is refused at once and
/// untouched, a NIC that stops answering is reported once, and a predecessor killed mid-traffic
/// leaves nothing the new driver takes for its own.
@Suite("The e1000 driver's start and failure")
struct E1000StartTests {
    /// CTRL, ICS and IMC offsets and CTRL.RST, as the datasheet gives them (the test's own).
    static let ctrl = 0x0000, ics = 0x00C8, imc = 0x00D8, reset: UInt32 = 1 << 26
    /// RCTL and TCTL (their enable bit is bit 1), and the rings' registers: base, length, head, tail.
    static let rctl = 0x0100, tctl = 0x0400, enable: UInt32 = 1 << 1
    static let ringRegisters: Set<Int> = [0x2800, 0x2804, 0x2808, 0x2810, 0x2818, 0x3800, 0x3804, 0x3808, 0x3810, 0x3818]
    static let receiveTimer: UInt32 = 1 << 7, transmitWritten: UInt32 = 1 << 0

    static func isNotResponding(_ error: any Error) -> Bool {
        if case .notResponding = error as? E1000Driver.Failure { return true }
        return false
    }

    @Test(arguments: ExecutionMode.allCases)
    func aNICReadingAllOnesIsRefusedAtOnceWithoutARegisterWrite(_ mode: ExecutionMode) throws {
        let model = E1000Model()
        model.notResponding = true
        let device = try ModeledDevice(model)
        defer { device.close() }
        try withVerifiedRuntime(mode) { runtime in
            let error = #expect(throws: E1000Driver.Failure.self) {
                _ = try E1000Driver(device: device, runtime: runtime, interrupt: .intx)
            }
            // At once: STATUS read, and the NIC refused without a wait polling a register.
            #expect(device.registerAccesses == 1, "register accesses before the refusal: \(device.registerAccesses)")
            #expect(error.map(Self.isNotResponding) == true, "\(String(describing: error))")
            #expect("\(error.map { "\($0)" } ?? "")".hasPrefix("device not responding"))
            #expect(model.writes.isEmpty, "no register written: \(model.writes)")
            let command = try device.config.command()
            #expect(!command.contains(.busMaster), "bus mastering left off")
        }
    }

    @Test(arguments: ExecutionMode.allCases)
    func aNICThatStopsAnsweringIsReportedOnceAndEveryLaterCallFailsAtOnce(_ mode: ExecutionMode) throws {
        try withE1000(mode, .interrupts(.intx)) { driver, model, runtime in
            model.loopback = true
            try driver.send([UInt8](repeating: 1, count: 60))
            #expect(driver.failure == nil)
            model.notResponding = true
            #expect(!driver.linkUp, "STATUS reads all-ones")
            let failure = try #require(driver.failure)
            #expect(Self.isNotResponding(failure), "\(failure)")
            let device = try #require(driver.device as? ModeledDevice)
            let noFrame: (Int, inout DMAByteWriter) -> Void = { _, frame in frame.fill(0, at: 0, length: 60) }
            // At once: the calls fail before touching the NIC, so none can wait polling a
            // register. (Counted, not timed: on a loaded machine three calls that never waited
            // once took 0.95 s. Meanwhile the ISR keeps reading the all-ones ICR of the INTx
            // line the dead NIC holds asserted; only the calls' own accesses are counted.)
            let accesses = device.registerAccesses(during: {
                #expect(performing: { try driver.transmitFrames(count: 1, noFrame) }, throws: Self.isNotResponding)
                #expect(performing: { try driver.receiveFrames(budget: 4) { _ in } }, throws: Self.isNotResponding)
                #expect(performing: { try driver.send([UInt8](repeating: 2, count: 60)) }, throws: Self.isNotResponding)
            }, counted: { runtime.currentContext == .passive })
            #expect(accesses == 0, "registers touched by the calls after the failure was reported")
            #expect(driver.failure == failure, "reported once: the first report stays")
            model.notResponding = false
        }
    }

    /// An interrupt whose ICR reads all-ones is the ISR's news that the NIC went away: reported
    /// with nobody calling the driver. (By MSI: with INTx a dead NIC's line stays asserted and
    /// the interrupt comes back after every acknowledge, until the runtime can disable it.)
    @Test(arguments: ExecutionMode.allCases)
    func theISRNoticesANICThatStoppedAnswering(_ mode: ExecutionMode) throws {
        try withE1000(mode, .interrupts(.msi), model: E1000Model(variant: .i82574L)) { driver, model, _ in
            model.notResponding = true
            model.assertInterrupt()
            for _ in 0..<5000 where driver.failure == nil { usleep(1000) }
            let failure = driver.failure
            model.notResponding = false
            #expect(failure.map(Self.isNotResponding) == true)
            #expect("\(failure.map { "\($0)" } ?? "")".contains("ICR"), "\(String(describing: failure))")
        }
    }

    /// With nobody calling it, the polling thread notices a NIC that went away.
    @Test func thePollingThreadNoticesANICThatStoppedAnswering() throws {
        try withE1000(.user, .pollingThread) { driver, model, _ in
            model.notResponding = true
            for _ in 0..<5000 where driver.failure == nil { usleep(1000) }
            #expect(driver.failure.map(Self.isNotResponding) == true)
            model.notResponding = false
        }
    }

    /// A predecessor killed mid-traffic leaves the NIC with its rings enabled, its receive
    /// causes unmasked and causes pending. The next driver resets before anything else (only
    /// interrupt masking before CTRL.RST, bus mastering off until after it), never unmasks a
    /// stale cause, and then moves frames as if the NIC were new.
    @Test(arguments: ExecutionMode.allCases)
    func aPredecessorKilledMidTrafficLeavesNothingBehind(_ mode: ExecutionMode) throws {
        let model = E1000Model()
        model.loopback = true
        do {
            let device = try ModeledDevice(model)
            let runtime = try makeRuntime(mode)
            let predecessor = try E1000Driver(device: device, runtime: runtime, interrupt: .intx)
            for index in 0..<10 { try predecessor.send([UInt8](repeating: UInt8(index), count: 60)) }
            for _ in 0..<5000 where model.transmitted.count < 10 { usleep(1000) }
            // Killed: never stopped; its ISR gone, causes are latched after its last interrupt.
            runtime.shutdown()
            try device.region(0).store(Self.receiveTimer | Self.transmitWritten, to: Register<UInt32>(Self.ics))
            device.close()
            withExtendedLifetime(predecessor) {}
        }
        #expect(model.pendingCauses & Self.receiveTimer != 0)
        #expect(model.ringsEnabled == (true, true))
        #expect(model.interruptMask & Self.receiveTimer != 0)
        let staleUnmasks = model.unmaskedWhilePending
        model.clearWrites()

        try withE1000(mode, .interrupts(.intx), model: model) { driver, model, _ in
            let writes = model.writes
            let reset = try #require(writes.firstIndex { $0.offset == Self.ctrl && $0.value & Self.reset != 0 }, "a global reset")
            #expect(writes[..<reset].allSatisfy { $0.offset == Self.imc || [Self.rctl, Self.tctl].contains($0.offset) && $0.value == 0 },
                    "only interrupt masking and the receiver and transmitter turned off before the reset: \(writes[..<reset])")
            #expect(writes[...reset].allSatisfy { !$0.busMaster }, "bus mastering off until the reset")
            #expect(writes.contains { $0.busMaster }, "bus mastering on afterwards")
            #expect(model.unmaskedWhilePending == staleUnmasks, "no stale cause unmasked")

            let got = Mutex<[[UInt8]]>([])
            driver.onFrame = { frame in got.withLock { $0.append(frame) } }
            let frames = (0..<5).map { [UInt8](repeating: 0xA0 + UInt8($0), count: 64) }
            for frame in frames { try driver.send(frame) }
            for _ in 0..<5000 where got.withLock({ $0.count }) < 5 { usleep(1000) }
            usleep(20_000)
            #expect(got.withLock { $0 } == frames, "exactly the new frames, once each, in order")
            #expect(driver.statistics.framesReceived == 5)
        }
    }
}

extension E1000StartTests {
    /// A NIC whose reset leaves the receiver and the transmitter as a killed predecessor left
    /// them (QEMU's e1000 and e1000e reset only the MAC address on CTRL.RST) must still start
    /// clean: the driver turns both off by hand before the reset, writes every ring register
    /// (base, length, head, tail) only while both are off, and enables the receiver only with
    /// bus mastering on. Otherwise the tail written at start hands the frames queued for the
    /// NIC to descriptors whose writes go nowhere (bus mastering off), and nothing is received.
    /// Checked on both controllers, after a predecessor killed with both rings enabled.
    @Test(arguments: [E1000Model.Variant.i82540EM, .i82574L])
    func theRingsAreWrittenOnlyWhileTheReceiverAndTransmitterAreOff(_ variant: E1000Model.Variant) throws {
        let model = E1000Model(variant: variant)
        do {
            let device = try ModeledDevice(model)
            let runtime = try makeRuntime(.user)
            let predecessor = try E1000Driver(device: device, runtime: runtime, interrupt: .intx)
            runtime.shutdown()
            device.close()
            withExtendedLifetime(predecessor) {}
        }
        #expect(model.ringsEnabled == (true, true))
        model.clearWrites()
        try withE1000(.user, .interrupts(.intx), model: model) { _, model, _ in
            var receiving = true, transmitting = true  // As the predecessor left them, whatever the reset does.
            var ringWrites = 0
            for write in model.writes {
                if write.offset == Self.rctl {
                    receiving = write.value & Self.enable != 0
                    if receiving { #expect(write.busMaster, "the receiver enabled only with bus mastering on") }
                }
                if write.offset == Self.tctl { transmitting = write.value & Self.enable != 0 }
                if Self.ringRegisters.contains(write.offset) {
                    ringWrites += 1
                    #expect(!receiving && !transmitting,
                            "ring register 0x\(String(write.offset, radix: 16)) written with the receiver or transmitter on")
                }
            }
            #expect(ringWrites >= Self.ringRegisters.count)
            #expect(receiving && transmitting, "both on at the end")
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
