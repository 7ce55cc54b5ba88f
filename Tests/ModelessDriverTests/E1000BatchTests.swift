import ModelessDevice
import ModelessDrivers
import ModelessModels
import ModelessRuntime
import ModelessSystem
import Synchronization
import Testing

/// The e1000 driver's batched datapath against the e1000 model: frames lent from and filled
/// into the DMA buffers, batches bounded by the ring and the budget, and NAPI-style receive.
@Suite("The e1000 driver's batched datapath")
struct E1000BatchTests {
    /// Frame `index` of a test: its length runs through 14…1514 (both ends included) and its
    /// bytes depend on the index and the position, so a lost, repeated, reordered or damaged
    /// frame cannot pass for another.
    static func frame(_ index: Int) -> [UInt8] {
        let lengths = [14, 60, 1514, 61, 1000]
        let length = index < lengths.count ? lengths[index] : 14 + (index * 397) % 1501
        return (0..<length).map { UInt8(truncatingIfNeeded: index &* 131 &+ $0 &* 7 &+ ($0 >> 8)) }
    }

    func withDriver(_ mode: ExecutionMode = .user, _ receive: E1000Driver.ReceiveMode, ringSize: Int = 32, budget: Int = 64,
                    _ body: (E1000Driver, E1000Model) throws -> Void) throws {
        try withE1000(mode, receive, ringSize: ringSize, budget: budget) { driver, model, _ in try body(driver, model) }
    }

    /// 600 frames out and back in by loopback in batches (many turns of both rings): every
    /// frame arrives once, in order, byte for byte, and no batch is larger than asked or than the ring allows.
    @Test(arguments: ExecutionMode.allCases, [32, 256])
    func loopbackBatchesLoseReorderAndCorruptNothing(_ mode: ExecutionMode, _ ringSize: Int) throws {
        try withDriver(mode, .caller, ringSize: ringSize) { (driver, model) throws in
            model.loopback = true
            let total = 600
            var sent = 0, received = 0, mismatches = 0
            while sent < total {
                let want = min(total - sent, 100)
                let queued = try driver.transmitFrames(count: want) { index, writer in
                    writer.set(Self.frame(sent + index), at: 0)
                }
                #expect(queued <= min(want, ringSize - 1), "a batch never exceeds what was asked or the ring")
                sent += queued
                // Take back everything sent so far before sending more, so the receive ring cannot overflow.
                let deadline = monotonicNanoseconds() + 10_000_000_000
                while received < sent && monotonicNanoseconds() < deadline {
                    let taken = try driver.receiveFrames(budget: 16) { frame in
                        if !frame.matches(Self.frame(received)) || frame.count != Self.frame(received).count { mismatches += 1 }
                        received += 1
                    }
                    #expect(taken <= 16, "a receive batch never exceeds its budget")
                    if taken == 0 { usleep(100) }
                }
                try #require(received == sent, "frames \(received)..<\(sent) never came back")
            }
            #expect(mismatches == 0, "every frame came back byte for byte, in order")
            #expect(model.droppedFrames == 0)
            #expect(model.transmitted == (0..<total).map(Self.frame), "the NIC sent every frame once, in order")
            let statistics = driver.statistics
            #expect(statistics.framesSent == total && statistics.framesReceived == total)
            #expect(statistics.bytesSent == (0..<total).reduce(0) { $0 + Self.frame($1).count })
            #expect(driver.transmitBatches < total / 4, "frames went out in batches, one doorbell each")
        }
    }

    @Test(arguments: ExecutionMode.allCases)
    func aBatchIsCutToTheFreeDescriptorsAndAReceiveBatchToItsBudget(_ mode: ExecutionMode) throws {
        try withDriver(mode, .caller, ringSize: 32) { (driver, model) throws in
            #expect(try driver.transmitFrames(count: 100) { index, writer in writer.set(Self.frame(index), at: 0) } == 31)
            for _ in 0..<10_000 where model.transmitted.count < 31 { usleep(1000) }
            #expect(model.transmitted == (0..<31).map(Self.frame))
            for index in 0..<20 { model.receive(Self.frame(index)) }
            var got: [[UInt8]] = []
            for _ in 0..<10_000 where got.count < 20 {
                let taken = try driver.receiveFrames(budget: 5) { got.append($0.copyToArray()) }
                #expect(taken <= 5)
                if taken == 0 { usleep(1000) }
            }
            #expect(got == (0..<20).map(Self.frame))
        }
    }

    @Test(arguments: ExecutionMode.allCases)
    func aFrameTooShortStopsTheBatchAfterTheFramesBeforeIt(_ mode: ExecutionMode) throws {
        try withDriver(mode, .caller) { (driver, model) throws in
            #expect(throws: E1000Driver.Failure.self) {
                try driver.transmitFrames(count: 3) { index, writer in
                    writer.set(index == 1 ? [1, 2, 3] : Self.frame(index), at: 0)
                }
            }
            for _ in 0..<2000 where model.transmitted.isEmpty { usleep(1000) }
            usleep(20_000)
            #expect(model.transmitted == [Self.frame(0)])
            #expect(driver.statistics.framesSent == 1)
            #expect(throws: E1000Driver.Failure.self) { try driver.transmitFrames(count: -1) { _, _ in } }
        }
    }

    @Test func badRingSizesAndBudgetsAreRefused() throws {
        let model = E1000Model()
        let device = try ModeledDevice(model)
        defer { device.close() }
        try withVerifiedRuntime(.user) { runtime in
            for (ring, budget) in [(12, 64), (0, 64), (8192, 64), (32, 0)] {
                #expect(throws: E1000Driver.Failure.self) {
                    _ = try E1000Driver(device: device, runtime: runtime, receive: .caller, ringSize: ring, receiveBudget: budget)
                }
            }
            #expect(model.writes.isEmpty, "refused before touching the NIC")
        }
    }

    /// NAPI style: while the receive DPC works, receive interrupts stay masked; a pass that uses
    /// its whole budget queues the DPC again; once the ring is empty they are unmasked, and the
    /// next frame raises an interrupt again.
    @Test(arguments: ExecutionMode.allCases)
    func receiveInterruptsStayMaskedWhileTheDPCPolls(_ mode: ExecutionMode) throws {
        try withDriver(mode, .interrupts(.intx), ringSize: 64, budget: 4) { (driver, model) throws in
            let receiveTimer: UInt32 = 1 << 7
            let got = Mutex<[[UInt8]]>([])
            let unmaskedWhileProcessing = Atomic<Int>(0)
            driver.onFrameView = { frame in
                if model.interruptMask & receiveTimer != 0 { unmaskedWhileProcessing.add(1, ordering: .relaxed) }
                usleep(300)  // A slow consumer, so frames pile up and passes use their budget.
                got.withLock { $0.append(frame.copyToArray()) }
            }
            for index in 0..<40 { model.receive(Self.frame(index)) }
            for _ in 0..<10_000 where got.withLock({ $0.count }) + model.droppedFrames < 40 { usleep(1000) }
            let frames = got.withLock { $0 }
            #expect(frames.count + model.droppedFrames == 40)
            #expect(frames == (0..<40).map(Self.frame).filter { frames.contains($0) }, "in order, intact")
            #expect(unmaskedWhileProcessing.load(ordering: .relaxed) == 0, "receive interrupts masked during processing")
            #expect(driver.receivePasses.budgetExhausted > 0, "passes that used their budget polled again")
            for _ in 0..<1000 where model.interruptMask & receiveTimer == 0 { usleep(1000) }
            #expect(model.interruptMask & receiveTimer != 0, "unmasked once the ring is empty")
            model.receive(Self.frame(99))
            for _ in 0..<10_000 where got.withLock({ $0.last }) != Self.frame(99) { usleep(1000) }
            #expect(got.withLock { $0.last } == Self.frame(99), "the next frame is noticed by interrupt")
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
