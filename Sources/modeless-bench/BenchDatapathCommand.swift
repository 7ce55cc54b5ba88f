import ArgumentParser
import ModelessCommandLine
import ModelessDevice
import ModelessDrivers
import ModelessModels
import ModelessRuntime
import ModelessServices
import ModelessSystem
import Synchronization

/// Drives the drivers' hot paths against the device models, with no VM, for counting what
/// they cost per frame and per I/O (scripts/bench/retain-release runs it under callgrind).
struct BenchDatapath: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "datapath",
        abstract: "Drive the e1000 and NVMe datapaths against their models (for callgrind).",
        discussion: """
            Sends FRAMES 60-byte frames through the e1000 driver's batched transmit into the e1000 \
            model with loopback on and takes each back with the batched receive, checking its \
            sequence number; then reads IOS random 4 KiB blocks through the NVMe driver's tagged, \
            polled reads from the NVMe model, DEPTH at a time. Every call into a driver goes \
            through one of four functions that are never inlined (datapathTransmit, \
            datapathReceive, datapathSubmitRead, datapathPollReads), so that a profiler can count \
            what happens inside them and nothing else.
            """,
        shouldDisplay: false)

    @Option(help: "Frames to send and receive.")
    var frames = 10_000

    @Option(help: "4 KiB reads.")
    var ios = 10_000

    @Option(help: "Frames per transmit batch, and the receive budget.")
    var batch = 32

    @Option(help: "NVMe reads in flight.")
    var depth = 8

    @Flag(help: "Read with a completion closure per read (readAsync) instead of tags, for comparison.")
    var closureReads = false

    @OptionGroup var output: BenchOutputOptions

    func validate() throws {
        guard frames >= 0, ios >= 0 else { throw ValidationError("--frames and --ios must not be negative") }
        guard batch > 0 else { throw ValidationError("--batch must be positive") }
        guard (1...63).contains(depth) else { throw ValidationError("--depth must be 1 to 63") }
    }

    func run() throws {
        var results = BenchResults(benchmark: "datapath", parameters: [
            "frames": "\(frames)", "ios": "\(ios)", "batch": "\(batch)", "depth": "\(depth)", "closure-reads": "\(closureReads)"])
        do {
            if frames > 0 { try runE1000(&results) }
            if ios > 0 { try runNVMe(&results) }
            try output.finish(results)
        } catch let exit as ExitCode {
            throw exit
        } catch {
            printError("\(error)")
            throw ExitCode(1)
        }
    }

    private func runE1000(_ results: inout BenchResults) throws {
        let model = E1000Model()
        model.loopback = true
        let device = try ModeledDevice(model)
        defer { device.close() }
        let runtime = try makeRuntime(.user)
        defer { runtime.shutdown() }
        let driver = try E1000Driver(device: device, runtime: runtime, receive: .caller, ringSize: 256)
        defer { driver.stop() }
        let start = monotonicNanoseconds()
        var sent = 0, received = 0, wrong = 0
        let mac = driver.macAddress
        let broadcast = [UInt8](repeating: 0xFF, count: 6)
        let testFrame = TestFrame(to: broadcast, from: mac)
        while received < frames {
            if sent < frames && sent - received < 128 {
                sent += try datapathTransmit(driver, count: min(batch, frames - sent), testFrame, firstSequence: sent)
            }
            let taken = try datapathReceive(driver, budget: batch) { frame in
                let sequence = UInt32(frame.bigEndian16(at: 14)) << 16 | UInt32(frame.bigEndian16(at: 16))
                if frame.count != 60 || sequence != UInt32(truncatingIfNeeded: received) { wrong += 1 }
                received += 1
            }
            if taken == 0 { sched_yield() }
        }
        let elapsed = Double(monotonicNanoseconds() - start) / 1e9
        guard wrong == 0, model.droppedFrames == 0 else {
            throw E1000Driver.Failure.badFrame("\(wrong) frames came back wrong and the model dropped \(model.droppedFrames)")
        }
        printLine("e1000: \(frames) frames sent and received back in order in \(fixed(elapsed, 2)) s")
        results.add("e1000 model, batches of \(batch)", ["frames": Double(frames), "seconds": elapsed, "framesPerSecond": Double(frames) / elapsed])
    }

    private func runNVMe(_ results: inout BenchResults) throws {
        let model = NVMeModel(blocks: 16384)
        let device = try ModeledDevice(model)
        defer { device.close() }
        let runtime = try makeRuntime(.user)
        defer { runtime.shutdown() }
        let controller = try NVMeController(device: device, runtime: runtime, completion: .poll)
        defer { controller.stop() }
        let pool = try DMAPool(device: device, chunkSize: 4096, count: depth)
        defer { pool.buffer.free() }
        let slots = UInt64(model.blockCount / 8)
        var generator = SystemRandomNumberGenerator()
        var submitted = 0, completed = 0, failed = 0
        let finishedClosures = Mutex<[UInt64]>([])
        let failedClosures = Atomic<Int>(0)
        var free: [UInt64] = Array(0..<UInt64(min(depth, ios)))  // Chunks (their index is the tag) ready for a read.
        free.reserveCapacity(depth)
        let start = monotonicNanoseconds()
        while completed < ios {
            while submitted < ios, let tag = free.popLast() {
                let lba = UInt64.random(in: 0..<slots, using: &generator) * 8
                if closureReads {
                    try datapathReadWithClosure(controller, lba: lba, into: pool.chunk(Int(tag)), of: pool) { result in
                        if case .failure = result { failedClosures.add(1, ordering: .relaxed) }
                        finishedClosures.withLock { $0.append(tag) }
                    }
                } else {
                    try datapathSubmitRead(controller, lba: lba, into: pool.chunk(Int(tag)), of: pool, tag: tag)
                }
                submitted += 1
            }
            let found = try datapathPollReads(controller) { entry in
                if !entry.succeeded { failed += 1 }
                completed += 1
                free.append(entry.tag)
            }
            let closures = finishedClosures.withLock { tags in defer { tags.removeAll(keepingCapacity: true) }; return tags }
            completed += closures.count
            free += closures
            if found == 0 { sched_yield() }
        }
        failed += failedClosures.load(ordering: .relaxed)
        let elapsed = Double(monotonicNanoseconds() - start) / 1e9
        guard failed == 0 else { throw NVMeController.Failure.badRequest("\(failed) reads failed") }
        printLine("nvme: \(ios) 4 KiB reads (\(closureReads ? "a closure each" : "tagged")), \(depth) in flight, in \(fixed(elapsed, 2)) s")
        results.add("nvme model, \(closureReads ? "a closure each" : "tagged"), depth \(depth)",
                    ["reads": Double(ios), "seconds": elapsed, "readsPerSecond": Double(ios) / elapsed])
    }
}

// The only calls the datapath bench makes into the drivers' hot paths, never inlined so that
// scripts/bench/retain-release can tell callgrind to count inside them alone.

/// A batch of test frames numbered from `firstSequence`, through the batch form of the
/// transmit path as `bench e1000` sends them (the fill inlined into the batch's loop).
@inline(never)
func datapathTransmit(_ driver: E1000Driver, count: Int, _ testFrame: TestFrame, firstSequence: Int) throws -> Int {
    try driver.transmitBatch(upTo: count) { batch in
        batch.appendAll { index, frame in testFrame.fill(&frame, sequence: UInt32(truncatingIfNeeded: firstSequence &+ index)) }
    }
}

@inline(never)
func datapathReceive(_ driver: E1000Driver, budget: Int, _ body: (borrowing DMABytes) -> Void) throws -> Int {
    try driver.receiveFrames(budget: budget, body)
}

@inline(never)
func datapathSubmitRead(_ controller: NVMeController, lba: UInt64, into chunk: DMAPool.Chunk, of pool: DMAPool, tag: UInt64) throws {
    try controller.submitRead(lba: lba, blocks: 8, into: chunk, of: pool, tag: tag)
}

/// The allocating path, for comparison: a completion closure per read.
@inline(never)
func datapathReadWithClosure(_ controller: NVMeController, lba: UInt64, into chunk: DMAPool.Chunk, of pool: DMAPool,
                             _ completion: @escaping @Sendable (Result<Void, NVMeController.Failure>) -> Void) throws {
    try controller.readAsync(lba: lba, blocks: 8, into: chunk, of: pool, completion: completion)
}

@inline(never)
func datapathPollReads(_ controller: NVMeController, _ visit: (NVMeIOCompletion) -> Void) throws -> Int {
    try controller.pollCompletions(visit)
}

#if canImport(Glibc)
import Glibc
#endif
