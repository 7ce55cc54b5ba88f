import ModelessDevice
import ModelessDrivers
import ModelessModels
import ModelessRuntime
import ModelessSystem
import Testing

/// The batch form of the e1000 transmit path (``E1000Driver/transmitBatch(upTo:_:)``): frames
/// appended to a batch lent once, cut to the free descriptors, with write-backs (RS) asked
/// every report interval and on each batch's last descriptor.
@Suite("The e1000 driver's transmit batches")
struct E1000TransmitBatchTests {
    static func frame(_ index: Int) -> [UInt8] { E1000BatchTests.frame(index) }

    func withDriver(_ mode: ExecutionMode, ringSize: Int, reportEvery: Int? = nil,
                    _ body: (E1000Driver, E1000Model) throws -> Void) throws {
        let model = E1000Model()
        let device = try ModeledDevice(model)
        defer { device.close() }
        try withVerifiedRuntime(mode) { runtime in
            let driver = try E1000Driver(device: device, runtime: runtime, receive: .caller, ringSize: ringSize,
                                         transmitReportInterval: reportEvery)
            defer { driver.stop() }
            try body(driver, model)
        }
    }

    /// Waits until the model has sent `count` frames in all.
    func waitUntil(_ model: E1000Model, sent count: Int) {
        for _ in 0..<10_000 where model.transmitted.count < count { usleep(1000) }
    }

    @Test(arguments: ExecutionMode.allCases)
    func aBatchTakesTheFreeDescriptorsAndSendsWhatWasAppendedInOrder(_ mode: ExecutionMode) throws {
        try withDriver(mode, ringSize: 32) { driver, model in
            var fills = 0, room = -1, count = -1, refusedWhenFull = false
            let queued = try driver.transmitBatch(upTo: 100) { batch in
                room = batch.room
                while batch.append({ writer in writer.set(Self.frame(fills), at: 0); fills += 1 }) {}
                refusedWhenFull = !batch.append { _ in fills += 1000 } && batch.room == 0
                count = batch.count
            }
            #expect(room == 31, "one descriptor stays unused: 31 of 32 free")
            #expect(queued == 31 && count == 31 && fills == 31, "queued \(queued), counted \(count), filled \(fills)")
            #expect(refusedWhenFull, "a full batch refuses a frame without calling its fill")
            waitUntil(model, sent: 31)
            #expect(model.transmitted == (0..<31).map(Self.frame))
            #expect(try driver.transmitBatch(upTo: 0) { _ in Issue.record("an empty batch lends nothing") } == 0)
            // The caller may stop early: only what it appended goes out, and the next batch follows on.
            let more = try driver.transmitBatch(upTo: 10) { batch in
                for index in 31..<34 { batch.append { $0.set(Self.frame(index), at: 0) } }
            }
            #expect(more == 3)
            waitUntil(model, sent: 34)
            #expect(model.transmitted == (0..<34).map(Self.frame))
            #expect(driver.statistics.framesSent == 34 && driver.transmitBatches == 2)
        }
    }

    /// RS on every report interval's descriptor counted from the batch's start, and on the last
    /// of each batch (so the reclaim frees a whole batch by reading one descriptor), whatever
    /// the batch sizes and however the batches wrap around the ring.
    @Test(arguments: ExecutionMode.allCases)
    func writeBacksAreAskedEveryIntervalAndOnTheLastOfEachBatch(_ mode: ExecutionMode) throws {
        let interval = 8
        let sizes = [5, 20, 3, 8, 16, 1, 30, 17, 9, 24, 31, 2]
        try withDriver(mode, ringSize: 32, reportEvery: interval) { driver, model in
            var expected: [Bool] = []
            var sent = 0
            for size in sizes {
                let queued = try driver.transmitFrames(count: size) { index, writer in writer.set(Self.frame(sent + index), at: 0) }
                try #require(queued == size, "the ring had room for the whole batch (the model finished the one before)")
                sent += size
                expected += (1...size).map { $0 % interval == 0 || $0 == size }
                waitUntil(model, sent: sent)
            }
            #expect(model.transmitted == (0..<sent).map(Self.frame), "every frame once, in order")
            #expect(model.transmittedWithReportStatus == expected)
        }
    }

    @Test(arguments: ExecutionMode.allCases)
    func aFrameTooShortEndsTheBatchAfterTheFramesBeforeIt(_ mode: ExecutionMode) throws {
        try withDriver(mode, ringSize: 32) { driver, model in
            var results: [Bool] = []
            let error = #expect(throws: E1000Driver.Failure.self) {
                try driver.transmitBatch(upTo: 8) { batch in
                    results.append(batch.append { $0.set(Self.frame(0), at: 0) })
                    results.append(batch.append { $0.set([1, 2, 3], at: 0) })
                    results.append(batch.append { $0.set(Self.frame(2), at: 0) })
                    #expect(batch.room == 0 && batch.count == 1)
                }
            }
            #expect(results == [true, false, false], "refused, and nothing taken after it")
            #expect("\(error.map { "\($0)" } ?? "")".contains("frame 1 of the batch is 3 bytes"))
            waitUntil(model, sent: 1)
            usleep(20_000)
            #expect(model.transmitted == [Self.frame(0)])
            #expect(model.transmittedWithReportStatus == [true], "the batch's last frame asks for a write-back")
            #expect(throws: E1000Driver.Failure.self) { try driver.transmitBatch(upTo: -1) { _ in } }
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
