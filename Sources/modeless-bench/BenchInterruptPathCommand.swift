import ArgumentParser
import ModelessCommandLine
import ModelessDevice
import ModelessMeasurement
import ModelessModels
import ModelessRuntime
import ModelessServices
import ModelessSystem
import Synchronization

/// Drives the runtime's interrupt path against a bare interrupt source, one interrupt at a
/// time, for counting what each interrupt costs (scripts/bench/retain-release runs it under
/// callgrind).
struct BenchInterruptPath: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "interrupt-path",
        abstract: "Raise interrupts one at a time through the runtime (for callgrind).",
        discussion: """
            Attaches an ISR to an interrupt source model's vector: the ISR takes a spin lock, \
            counts, and queues a DPC, which takes the lock again and signals a wait event; the \
            main thread raises an interrupt and waits for that event, INTERRUPTS times. The \
            runtime serves each interrupt on its wait thread (user) or interrupt line \
            (kernel-emulation), whose functions scripts/bench/retain-release counts inside; the \
            raise and the wait are in two functions that are never inlined \
            (interruptPathRaise, interruptPathAwait).
            """,
        shouldDisplay: false)

    @Option(help: "Interrupts to raise.")
    var interrupts = 10_000

    @Option(help: "Execution mode: user or kernel-emulation.")
    var mode: ExecutionMode = .user

    @Option(help: "Interrupt type: msi or intx.")
    var irq: InterruptKind = .msi

    @OptionGroup var output: BenchOutputOptions

    @OptionGroup var histogram: HistogramPictureOption

    func validate() throws {
        guard interrupts > 0 else { throw ValidationError("--interrupts must be positive") }
        guard irq != .msix else { throw ValidationError("--irq must be msi or intx") }
    }

    func run() throws {
        do {
            try measure()
        } catch let exit as ExitCode {
            throw exit
        } catch {
            printError("\(error)")
            throw ExitCode(1)
        }
    }

    private func measure() throws {
        let device = try ModeledDevice(InterruptSourceModel())
        defer { device.close() }
        let runtime = try makeRuntime(mode, options: RuntimeOptions(interruptPriority: nil, dpcPriority: nil))
        defer { runtime.shutdown() }
        let shared = runtime.makeSpinLock("interrupt path", (isr: 0, dpc: 0))
        let done = runtime.makeWaitEvent("interrupt path done")
        let dpc = runtime.makeDPC("interrupt path") {
            shared.withLock { $0.dpc += 1 }
            done.signal()
        }
        let vector = try device.enableInterrupts(irq, count: 1)[0]
        let attachment = try runtime.attachInterrupt(vector, name: "interrupt path", acknowledge: { 1 }) { _ in
            shared.withLock { $0.isr += 1 }
            dpc.queue()
        }
        defer { runtime.detachInterrupt(attachment) }
        // Each interrupt's latency, from raising it to its DPC's signal: recorded without a lock
        // or an allocation, so that the measured path stays what callgrind profiles.
        let latency = TaggedLatencyHistogram(tags: 1)
        let start = monotonicNanoseconds()
        for round in 1...interrupts {
            let raised = monotonicNanoseconds()
            try interruptPathRaise(vector)
            let served = interruptPathAwait(done, shared, round)
            latency.record(monotonicNanoseconds() - raised)
            guard served else {
                printError("interrupt \(round) was not served within 5 s (\(attachment.lastError?.description ?? "no error recorded"))")
                throw ExitCode(1)
            }
        }
        let elapsed = Double(monotonicNanoseconds() - start) / 1e9
        printLine("\(mode) \(irq): \(interrupts) interrupts served one at a time in \(fixed(elapsed, 2)) s, \(attachment.failures) failures")
        var results = BenchResults(benchmark: "interrupt-path", parameters: ["interrupts": "\(interrupts)", "mode": "\(mode)", "irq": "\(irq)"])
        results.add("\(mode) \(irq): raise to DPC, one at a time", [
            "interrupts": Double(interrupts), "seconds": elapsed, "failures": Double(attachment.failures)], latency: latency.histogram)
        try histogram.write(results, title: "Interrupt path, \(mode) mode, \(irq): raise to DPC, \(interrupts) interrupts one at a time", text: output.text)
        try output.finish(results)
    }
}

@inline(never)
func interruptPathRaise(_ vector: InterruptVector) throws {
    try vector.trigger()
}

@inline(never)
func interruptPathAwait(_ done: WaitEvent, _ shared: SpinLock<(isr: Int, dpc: Int)>, _ round: Int) -> Bool {
    done.wait(timeout: .seconds(5)) { shared.withLock { $0.dpc >= round } }
}
