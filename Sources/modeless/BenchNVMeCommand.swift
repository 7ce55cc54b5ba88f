import ArgumentParser
import ModelessBus
import ModelessDevice
import ModelessDrivers
import ModelessRuntime
import ModelessSystem
import Synchronization

struct BenchNVMe: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nvme",
        abstract: "4 KiB random-read IOPS through the NVMe driver at given queue depths.",
        discussion: """
            Reads random 4 KiB-aligned blocks of namespace 1 with the asynchronous API, keeping \
            DEPTH reads in flight, for SECONDS at each depth. Compare with the kernel's driver on the \
            same device with fio (scripts/bench/nvme-vs-kernel does both in one VM boot).
            """)

    @Argument(help: "The NVMe controller, bound to vfio-pci.")
    var device: String

    @Option(help: "Execution mode: user or kernel-emulation.")
    var mode: ExecutionMode = .user

    @Option(help: "How completions are noticed: msix, intx or poll.")
    var irq: NVMeController.Completion = .msix

    @Option(help: "Seconds per queue depth.")
    var seconds = 5.0

    @Option(parsing: .upToNextOption, help: "Queue depths to measure.")
    var depths: [Int] = [1, 32]

    func run() throws {
        try withBoundDevice(device, mode: mode) { _, access, runtime in
            let controller = try NVMeController(device: access, runtime: runtime, completion: irq)
            defer { controller.stop() }
            let pool = try DMAPool(device: access, chunkSize: 4096, count: controller.queueEntries)
            defer { pool.buffer.free() }
            printLine("| path | queue depth | 4 KiB random reads/s |")
            printLine("| --- | ---: | ---: |")
            for depth in depths {
                guard depth > 0, depth < controller.queueEntries else {
                    printError("queue depth \(depth) is outside 1...\(controller.queueEntries - 1)")
                    throw ExitCode(64)
                }
                let iops = try measure(controller, pool, depth: depth)
                printLine("| Modeless NVMe, \(mode), \(irq) | \(depth) | \(Int(iops)) |")
            }
        }
    }

    private func measure(_ controller: NVMeController, _ pool: DMAPool, depth: Int) throws -> Double {
        let identity = controller.identity!
        let blocks = 4096 / identity.blockSize
        let slots = UInt64(identity.blockCount) / UInt64(blocks)
        let state = ConditionLock()
        let completed = Atomic<Int>(0)
        let failed = Atomic<Int>(0)
        let inFlight = Atomic<Int>(0)
        var generator = SystemRandomNumberGenerator()
        let start = monotonicNanoseconds()
        let end = start + UInt64(seconds * 1e9)
        while monotonicNanoseconds() < end {
            while inFlight.load(ordering: .acquiring) < depth, let chunk = pool.allocate() {
                inFlight.wrappingAdd(1, ordering: .acquiringAndReleasing)
                let lba = UInt64.random(in: 0..<slots, using: &generator) * UInt64(blocks)
                try controller.readAsync(lba: lba, blocks: blocks, into: chunk, of: pool) { result in
                    if case .failure = result { failed.wrappingAdd(1, ordering: .relaxed) }
                    pool.release(chunk)
                    completed.wrappingAdd(1, ordering: .relaxed)
                    inFlight.wrappingSubtract(1, ordering: .acquiringAndReleasing)
                    state.withLock { state.signal() }
                }
            }
            if controller.completion == .poll {
                try controller.pollCompletions()
            } else {
                state.withLock { if inFlight.load(ordering: .acquiring) >= depth { _ = state.wait(nanoseconds: 10_000_000) } }
            }
        }
        let counted = completed.load(ordering: .relaxed)
        let elapsed = Double(monotonicNanoseconds() - start) / 1e9
        // Let what is still in flight finish before the next depth or shutdown.
        while inFlight.load(ordering: .acquiring) > 0 {
            if controller.completion == .poll { try controller.pollCompletions() } else { usleep(1000) }
        }
        if failed.load(ordering: .relaxed) > 0 { throw NVMeController.Failure.badRequest("\(failed.load(ordering: .relaxed)) reads failed") }
        return Double(counted) / elapsed
    }
}

#if canImport(Glibc)
import Glibc
#endif
