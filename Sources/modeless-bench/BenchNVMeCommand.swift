import ArgumentParser
import ModelessBus
import ModelessCommandLine
import ModelessDevice
import ModelessDrivers
import ModelessMeasurement
import ModelessModels
import ModelessRuntime
import ModelessServices
import ModelessSystem
import Synchronization

struct BenchNVMe: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nvme",
        abstract: "4 KiB random-read IOPS through the NVMe driver at given queue depths.",
        discussion: """
            Reads random 4 KiB-aligned blocks of a namespace (--namespace N; default the first active one) with tagged asynchronous reads, keeping \
            DEPTH reads in flight (each completion submits the next), for SECONDS at each depth, and reports reads/s with the \
            latency percentiles p50, p99 and p99.9 (submission to completion handler, to within 1/32; --json gives the histograms). Compare with the kernel's driver on the \
            same device with fio (scripts/bench/nvme-vs-kernel does both in one VM boot). --model runs the \
            driver on the NVMe device model in this process instead (a check of the benchmark itself, not \
            a measurement of a device).
            """)

    @Argument(help: "The NVMe controller, bound to vfio-pci. Omit with --model.")
    var device: String?

    @Flag(help: "Run on the NVMe device model (a 4 MiB namespace in memory) instead of a device.")
    var model = false

    @Option(help: "Execution mode: user or kernel-emulation.")
    var mode: ExecutionMode = .user

    @OptionGroup var namespaceOption: NVMeNamespaceOption

    @Option(help: "How completions are noticed: msix, intx or poll.")
    var irq: NVMeController.Completion = .msix

    @Option(help: "At most this many I/O queue pairs with MSI-X (default: one per CPU).")
    var queues: Int?

    @Option(help: "Seconds per queue depth.")
    var seconds = 5.0

    @Option(parsing: .upToNextOption, help: "Queue depths to measure.")
    var depths: [Int] = [1, 32]

    @OptionGroup var output: BenchOutputOptions

    @OptionGroup var histogram: HistogramPictureOption

    func validate() throws {
        if model == (device != nil) { throw ValidationError("name an NVMe controller, or pass --model (not both)") }
    }

    func run() throws {
        var results = BenchResults(benchmark: "nvme", parameters: [
            "device": device ?? "model", "mode": "\(mode)", "irq": "\(irq)", "seconds": "\(seconds)",
            "depths": depths.map(String.init).joined(separator: " "), "queues": queues.map(String.init) ?? "one per CPU", "namespace": namespaceOption.namespace.map(String.init) ?? "first active"])
        try withController { access, runtime in
            let controller = try NVMeController(device: access, runtime: runtime, completion: irq, ioQueueLimit: queues)
            defer { controller.stop() }
            let namespace = try namespaceOption.select(on: controller)
            let pool = try DMAPool(device: access, chunkSize: 4096, count: controller.queueEntries)
            defer { pool.buffer.free() }
            let load = RandomReadLoad(controller: controller, pool: pool, namespace: namespace)
            controller.setCompletionHandler { load.complete($0) }
            printLine("\(controller.ioQueueCount) I/O queue\(controller.ioQueueCount == 1 ? "" : "s") of \(controller.queueEntries) entries")
            printLine("| path | queue depth | 4 KiB random reads/s | p50 µs | p99 µs | p99.9 µs |")
            printLine("| --- | ---: | ---: | ---: | ---: | ---: |")
            for depth in depths {
                guard depth > 0, depth < controller.queueEntries else {
                    printError("queue depth \(depth) is outside 1...\(controller.queueEntries - 1)")
                    throw ExitCode(64)
                }
                let iops = try measure(controller, load, depth: depth)
                let latency = [0.5, 0.99, 0.999].map { load.latency.percentile($0).map { fixed(Double($0) / 1000, 1) } ?? "n/a" }
                printLine("| Modeless NVMe, \(mode), \(irq) | \(depth) | \(Int(iops)) | \(latency.joined(separator: " | ")) |")
                results.add("Modeless NVMe, \(mode), \(irq), depth \(depth)", ["queueDepth": Double(depth), "readsPerSecond": iops],
                            latency: load.latency.histogram)
            }
        }
        try histogram.write(results, title: "NVMe 4 KiB random reads on \(device ?? "the NVMe model"), \(mode) mode, \(irq): submission to completion handler",
                            text: output.text)
        try output.finish(results)
    }

    /// Runs `body` with the named controller (bound to vfio-pci) or the NVMe model, and a runtime in `mode`.
    private func withController(_ body: (any DeviceAccess, any DriverRuntime) throws -> Void) throws {
        guard model else { return try withBoundDevice(device!, mode: mode) { _, access, runtime in try body(access, runtime) } }
        do {
            let access = try ModeledDevice(NVMeModel(blocks: 8192))
            defer { access.close() }
            let runtime = try makeRuntime(mode)
            defer { runtime.shutdown() }
            try body(access, runtime)
        } catch let exit as ExitCode {
            throw exit
        } catch {
            printError("\(error)")
            throw ExitCode(1)
        }
    }

    private func measure(_ controller: NVMeController, _ load: RandomReadLoad, depth: Int) throws -> Double {
        load.reset()
        load.latency.reset()
        let start = monotonicNanoseconds()
        let end = start + UInt64(seconds * 1e9)
        // The first reads spread over the I/O queues (one per CPU); each completion then
        // submits the next on the CPU that completed it, in one doorbell write per batch.
        try controller.batchSubmissions {
            for tag in 0..<depth {
                load.latency.start(UInt64(tag), at: monotonicNanoseconds())
                try load.submit(tag: UInt64(tag), queue: tag % controller.ioQueueCount)
                load.inFlight.wrappingAdd(1, ordering: .relaxed)
            }
        }
        while monotonicNanoseconds() < end {
            if let failure = controller.failure, failure.isDeviceRemoval { try removed(failure, load) }
            if controller.completion == .poll {
                try controller.pollCompletions { load.complete($0) }
            } else {
                usleep(20_000)
            }
        }
        load.running.store(false, ordering: .relaxed)
        let counted = load.completed.load(ordering: .relaxed)
        let elapsed = Double(monotonicNanoseconds() - start) / 1e9
        // Let what is still in flight finish before the next depth or shutdown.
        let drainDeadline = monotonicNanoseconds() + 5_000_000_000
        while load.inFlight.load(ordering: .acquiring) > 0 {
            if controller.completion == .poll { try controller.pollCompletions { load.complete($0) } } else { usleep(1000) }
            guard monotonicNanoseconds() < drainDeadline else {
                throw NVMeController.Failure.timedOut("\(load.inFlight.load(ordering: .relaxed)) reads to complete")
            }
        }
        let failed = load.failed.load(ordering: .relaxed)
        if failed > 0 { throw NVMeController.Failure.badRequest("\(failed) reads failed") }
        return Double(counted) / elapsed
    }

    /// The controller was removed under the load: waits (briefly) for the reads in flight to
    /// complete with the failure, says how many did, and throws it.
    private func removed(_ failure: NVMeController.Failure, _ load: RandomReadLoad) throws -> Never {
        load.running.store(false, ordering: .relaxed)
        let deadline = monotonicNanoseconds() + 1_000_000_000
        while load.inFlight.load(ordering: .acquiring) > 0 && monotonicNanoseconds() < deadline { usleep(1000) }
        printLine("removed under load: \(load.completed.load(ordering: .relaxed)) reads completed, \(load.failed.load(ordering: .relaxed)) failed with the removal, \(load.inFlight.load(ordering: .relaxed)) still in flight")
        throw failure
    }
}

/// Random 4 KiB reads kept in flight the way SPDK's perf and fio's engines keep them: each
/// completion submits the next read at once, from the completion handler (the completion
/// DPC, which the runtime runs on the interrupt's wait thread) or the polling loop. The read
/// for tag T lands in chunk T of the pool. Allocation-free: tagged reads, atomic counters and
/// a SplitMix64 sequence for the addresses.
final class RandomReadLoad: @unchecked Sendable {
    let controller: NVMeController
    let pool: DMAPool
    let running = Atomic<Bool>(true)
    /// Each read's latency, from its submission to its completion handler (the 65,536 tags
    /// an NVMe queue can have at most).
    let latency = TaggedLatencyHistogram(tags: 65536)
    let completed = Atomic<Int>(0)
    let failed = Atomic<Int>(0)
    let inFlight = Atomic<Int>(0)
    private let namespace: UInt32
    private let blocks: Int
    private let slots: UInt64
    private let sequence = Atomic<UInt64>(0x5EED)

    /// Reads from `namespace`, 4 KiB (one block or more) at a time.
    init(controller: NVMeController, pool: DMAPool, namespace: NVMeController.Namespace) {
        self.controller = controller
        self.pool = pool
        self.namespace = namespace.identifier
        blocks = max(1, 4096 / namespace.blockSize)
        slots = namespace.blockCount / UInt64(blocks)
    }

    func reset() {
        running.store(true, ordering: .relaxed)
        completed.store(0, ordering: .relaxed)
        failed.store(0, ordering: .relaxed)
    }

    /// Submits the read for `tag`, to I/O queue `queue` (the calling CPU's when nil).
    func submit(tag: UInt64, queue: Int? = nil) throws {
        try controller.submitRead(lba: nextSlot() * UInt64(blocks), blocks: blocks,
                                  into: pool.chunk(Int(tag)), of: pool, tag: tag, namespace: namespace, queue: queue)
    }

    /// A read finished: count it and, while running, submit the next in its place.
    func complete(_ completion: NVMeIOCompletion) {
        let now = monotonicNanoseconds()
        latency.finish(completion.tag, at: now)
        if !completion.succeeded { failed.wrappingAdd(1, ordering: .relaxed) }
        completed.wrappingAdd(1, ordering: .relaxed)
        if running.load(ordering: .relaxed) {
            latency.start(completion.tag, at: now)
            do {
                try submit(tag: completion.tag)
                return
            } catch {
                failed.wrappingAdd(1, ordering: .relaxed)
            }
        }
        inFlight.wrappingSubtract(1, ordering: .acquiringAndReleasing)
    }

    private func nextSlot() -> UInt64 {
        var z = sequence.wrappingAdd(0x9E37_79B9_7F4A_7C15, ordering: .relaxed).newValue
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return (z ^ (z >> 31)) % slots
    }
}

#if canImport(Glibc)
import Glibc
#endif
