import ArgumentParser
import ModelessCommandLine
import ModelessDevice
import ModelessMeasurement
import ModelessDrivers
import ModelessModels
import ModelessRuntime
import ModelessServices
import ModelessSystem
import Synchronization

/// Drives the drivers' interrupt-driven paths against the device models, with no VM, for
/// counting what each frame and each read costs there (scripts/bench/retain-release runs it
/// under callgrind): e1000 receive by INTx with the NAPI-style receive DPC, and NVMe tagged
/// reads completed by MSI-X.
struct BenchInterruptDatapath: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "interrupt-datapath",
        abstract: "Drive the e1000 INTx receive and NVMe MSI-X read paths against their models (for callgrind).",
        discussion: """
            e1000-intx: the e1000 driver receives by INTx on the e1000 model with loopback on; \
            COUNT 60-byte frames are sent one at a time, and each is awaited until the receive \
            DPC has handed it to the frame handler, so that every frame takes its own interrupt, \
            ISR (reading ICR, masking receive causes, queuing the DPC), DPC pass (taking the \
            frame, unmasking) and INTx unmask. nvme-msix: COUNT random 4 KiB tagged reads on the \
            NVMe model with MSI-X completions, DEPTH in flight, each completion submitting the \
            next from the completion handler (in the completion DPC). The runtime serves the \
            interrupts on its wait thread (user) or interrupt line (kernel-emulation); the \
            sends and the waits are in functions that are never inlined \
            (interruptDatapathSend, interruptDatapathAwait).
            """,
        shouldDisplay: false)

    /// The interrupt-driven path to drive.
    enum Path: String, ExpressibleByArgument, CaseIterable {
        case e1000INTx = "e1000-intx"
        case nvmeMSIX = "nvme-msix"
    }

    @Option(help: "The path: e1000-intx or nvme-msix.")
    var path: Path

    @Option(help: "Frames (e1000-intx) or reads (nvme-msix).")
    var count = 10_000

    @Option(help: "Execution mode: user or kernel-emulation.")
    var mode: ExecutionMode = .user

    @Option(help: "NVMe reads in flight (nvme-msix).")
    var depth = 1

    @OptionGroup var output: BenchOutputOptions

    @OptionGroup var histogram: HistogramPictureOption

    func validate() throws {
        guard count > 0 else { throw ValidationError("--count must be positive") }
        guard (1...63).contains(depth) else { throw ValidationError("--depth must be 1 to 63") }
        if histogram.histogramSVG != nil && path != .e1000INTx {
            throw ValidationError("--histogram-svg needs a path that times each operation on its own: e1000-intx (nvme-msix counts reads per interrupt)")
        }
    }

    func run() throws {
        do {
            var results = BenchResults(benchmark: "interrupt-datapath", parameters: [
                "path": path.rawValue, "count": "\(count)", "mode": "\(mode)", "depth": "\(depth)"])
            switch path {
            case .e1000INTx: try runE1000(&results)
            case .nvmeMSIX: try runNVMe(&results)
            }
            try histogram.write(results, title: "Interrupt datapath \(path.rawValue), \(mode) mode: \(count) frames on the e1000 model, each from its send to its receive DPC", text: output.text)
            try output.finish(results)
        } catch let exit as ExitCode {
            throw exit
        } catch {
            printError("\(error)")
            throw ExitCode(1)
        }
    }

    /// Real-time priorities off: under callgrind's serialized threads a SCHED_FIFO thread
    /// spinning for a lock could starve the rest.
    private var options: RuntimeOptions { RuntimeOptions(interruptPriority: nil, dpcPriority: nil) }

    private func runE1000(_ results: inout BenchResults) throws {
        let model = E1000Model()
        model.loopback = true
        let device = try ModeledDevice(model)
        defer { device.close() }
        let runtime = try makeRuntime(mode, options: options)
        defer { runtime.shutdown() }
        let driver = try E1000Driver(device: device, runtime: runtime, receive: .interrupts(.intx), ringSize: 256)
        defer { driver.stop() }
        let tally = FrameTally(runtime.makeWaitEvent("frame received"))
        driver.onFrameView = { frame in tally.received(frame) }
        let testFrame = TestFrame(to: broadcast, from: driver.macAddress)
        // Each frame's round trip, from its send to its receive DPC: recorded without a lock or
        // an allocation, so that the measured path stays what callgrind profiles.
        let latency = TaggedLatencyHistogram(tags: 1)
        let start = monotonicNanoseconds()
        for sequence in 0..<count {
            let sent = monotonicNanoseconds()
            try interruptDatapathSend(driver, testFrame, sequence: UInt32(truncatingIfNeeded: sequence))
            // Generous: under callgrind on a loaded machine a frame's interrupt can take seconds.
            let received = interruptDatapathAwait(tally.arrived, seconds: 300, until: { tally.frames.load(ordering: .acquiring) > sequence })
            latency.record(monotonicNanoseconds() - sent)
            guard received else {
                printError("frame \(sequence) was not received within 300 s (\(driver.failure.map { "\($0)" } ?? "no failure recorded"))")
                throw ExitCode(1)
            }
        }
        let elapsed = Double(monotonicNanoseconds() - start) / 1e9
        let wrong = tally.wrong.load(ordering: .relaxed)
        guard wrong == 0, model.droppedFrames == 0 else {
            throw E1000Driver.Failure.badFrame("\(wrong) frames came back wrong and the model dropped \(model.droppedFrames)")
        }
        let passes = driver.receivePasses.passes
        printLine("e1000 \(mode) intx: \(count) frames sent and received one at a time in \(fixed(elapsed, 2)) s, \(passes) receive DPC passes")
        results.add("e1000 model, \(mode), intx: send to receive, one frame at a time", [
            "frames": Double(count), "seconds": elapsed, "receiveDPCPasses": Double(passes)], latency: latency.histogram)
    }

    private func runNVMe(_ results: inout BenchResults) throws {
        let model = NVMeModel(blocks: 16384)
        let device = try ModeledDevice(model)
        defer { device.close() }
        let runtime = try makeRuntime(mode, options: options)
        defer { runtime.shutdown() }
        // Generous: under callgrind on a loaded machine an admin command can take seconds.
        let controller = try NVMeController(device: device, runtime: runtime, completion: .msix, commandTimeout: .seconds(300))
        defer { controller.stop() }
        let pool = try DMAPool(device: device, chunkSize: 4096, count: depth)
        defer { pool.buffer.free() }
        let load = CountedReadLoad(controller: controller, pool: pool, total: count, done: runtime.makeWaitEvent("reads done"))
        controller.setCompletionHandler { load.complete($0) }
        let start = monotonicNanoseconds()
        for tag in 0..<min(depth, count) { try load.submitFirst(tag: UInt64(tag)) }
        guard interruptDatapathAwait(load.done, seconds: 600, until: { load.completed.load(ordering: .acquiring) >= count }) else {
            printError("\(count - load.completed.load(ordering: .relaxed)) reads did not complete within 600 s")
            throw ExitCode(1)
        }
        let elapsed = Double(monotonicNanoseconds() - start) / 1e9
        let failed = load.failed.load(ordering: .relaxed)
        guard failed == 0 else { throw NVMeController.Failure.badRequest("\(failed) reads failed") }
        printLine("nvme \(mode) msix: \(count) 4 KiB tagged reads, \(depth) in flight, in \(fixed(elapsed, 2)) s, \(controller.isrCalls) ISR calls")
        results.add("nvme model, \(mode), msix, depth \(depth)", [
            "reads": Double(count), "seconds": elapsed, "readsPerSecond": Double(count) / elapsed, "isrCalls": Double(controller.isrCalls)])
    }
}

/// What the e1000 receive DPC handed over: frames in order, counted, each signalled.
private final class FrameTally: Sendable {
    let frames = Atomic<Int>(0)
    let wrong = Atomic<Int>(0)
    let arrived: WaitEvent

    init(_ arrived: WaitEvent) { self.arrived = arrived }

    /// In the receive DPC, with the receive lock held: checks the frame's sequence number.
    func received(_ frame: borrowing DMABytes) {
        let expected = UInt32(truncatingIfNeeded: frames.load(ordering: .relaxed))
        let sequence = UInt32(frame.bigEndian16(at: 14)) << 16 | UInt32(frame.bigEndian16(at: 16))
        if frame.count != 60 || sequence != expected { wrong.wrappingAdd(1, ordering: .relaxed) }
        frames.wrappingAdd(1, ordering: .releasing)
        arrived.signal()
    }
}

/// Exactly `total` random 4 KiB tagged reads: each completion submits the next from the
/// completion handler while fewer than `total` were submitted; the last one signals `done`.
private final class CountedReadLoad: @unchecked Sendable {
    let controller: NVMeController
    let pool: DMAPool
    let total: Int
    let done: WaitEvent
    let submitted = Atomic<Int>(0)
    let completed = Atomic<Int>(0)
    let failed = Atomic<Int>(0)
    private let slots: UInt64
    private let sequence = Atomic<UInt64>(0x5EED)

    init(controller: NVMeController, pool: DMAPool, total: Int, done: WaitEvent) {
        self.controller = controller
        self.pool = pool
        self.total = total
        self.done = done
        slots = controller.identity.blockCount / UInt64(4096 / controller.identity.blockSize)
    }

    func submitFirst(tag: UInt64) throws {
        submitted.wrappingAdd(1, ordering: .relaxed)
        try submit(tag: tag)
    }

    private func submit(tag: UInt64) throws {
        let blocks = 4096 / controller.identity.blockSize
        try controller.submitRead(lba: nextSlot() * UInt64(blocks), blocks: blocks, into: pool.chunk(Int(tag)), of: pool, tag: tag)
    }

    /// In the completion DPC: counts the read and submits the next in its place.
    func complete(_ completion: NVMeIOCompletion) {
        if !completion.succeeded { failed.wrappingAdd(1, ordering: .relaxed) }
        if submitted.load(ordering: .relaxed) < total {
            submitted.wrappingAdd(1, ordering: .relaxed)
            do { try submit(tag: completion.tag) } catch { failed.wrappingAdd(1, ordering: .relaxed) }
        }
        if completed.wrappingAdd(1, ordering: .releasing).newValue == total { done.signal() }
    }

    private func nextSlot() -> UInt64 {
        var z = sequence.wrappingAdd(0x9E37_79B9_7F4A_7C15, ordering: .relaxed).newValue
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return (z ^ (z >> 31)) % slots
    }
}

// The only calls the main thread makes on these paths, never inlined so that
// scripts/bench/retain-release can count inside them.

private let broadcast: [UInt8] = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]

@inline(never)
func interruptDatapathSend(_ driver: E1000Driver, _ testFrame: TestFrame, sequence: UInt32) throws {
    let sent = try driver.transmitFrames(count: 1) { _, frame in testFrame.fill(&frame, sequence: sequence) }
    guard sent == 1 else { throw E1000Driver.Failure.transmitRingFull }
}

@inline(never)
func interruptDatapathAwait(_ event: WaitEvent, seconds: Int64 = 5, until condition: () -> Bool) -> Bool {
    event.wait(timeout: .seconds(seconds), until: condition)
}
