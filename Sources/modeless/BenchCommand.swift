import ArgumentParser
import ModelessBus
import ModelessDevice
import ModelessModels
import ModelessRuntime

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure the runtime against baselines taken in the same run.",
        subcommands: [BenchInterrupts.self, BenchNVMe.self, BenchE1000.self, BenchLogical.self, BenchFailover.self, BenchDatapath.self,
                      BenchInterruptPath.self, BenchInterruptDatapath.self])

    /// Every benchmark says loudly when it runs from a debug build: its numbers then measure
    /// the unoptimized code (several times slower, with exclusivity checks and no inlining),
    /// not the drivers.
    func validate() throws {
        #if DEBUG
        var text = """
            ******************************************************************************
            modeless: WARNING: this is a DEBUG build. Benchmark numbers from it measure
            unoptimized code and are not comparable with anything: build and run
            `swift build -c release` and .build/release/modeless for numbers to keep.
            ******************************************************************************

            """
        text.withUTF8 { buffer in _ = write(2, buffer.baseAddress, buffer.count) }
        #endif
    }
}

struct BenchInterrupts: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "interrupts",
        abstract: "Interrupt-to-ISR latency (p50, p99) and sustained rate: eventfd baseline, user mode, kernel emulation.",
        discussion: """
            Without a device, interrupts come from a software source (a device model's MSI vector, \
            one eventfd write each). With a device bound to vfio-pci, they come from VFIO's loopback \
            trigger (VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER) on its first MSI vector, \
            so the kernel's VFIO interrupt path is part of what is measured.
            """)

    @Argument(help: "A device bound to vfio-pci (optional).")
    var device: String?

    @Option(help: "Latency samples per configuration.")
    var samples = 20000

    @Option(help: "Seconds of flooding for the sustained rate.")
    var seconds = 2.0

    @Option(help: "Rounds: the configurations are measured this many times, interleaved, and the median ratio is reported.")
    var rounds = 3

    func run() throws {
        let source: () throws -> (device: any DeviceAccess, vector: InterruptVector)
        if let device {
            let address: PCIAddress
            do { address = try PCIBus().resolve(try DeviceSelector(parsing: device)).address } catch { throw ExitStatus.fail(error) }
            source = {
                let access = try VFIODevice(address)
                return (access, try access.enableInterrupts(access.vectorCount(.msix) > 0 ? .msix : .msi, count: 1)[0])
            }
        } else {
            source = {
                let access = try ModeledDevice(InterruptSourceModel())
                return (access, try access.enableInterrupts(.msi, count: 1)[0])
            }
        }
        let benchmark = InterruptBenchmark(samples: samples, rateSeconds: seconds, openSource: source)
        var rows: [[InterruptBenchmark.Result]] = []
        for round in 1...rounds {
            printLine("round \(round) of \(rounds)…")
            rows.append([try benchmark.baseline(), try benchmark.runtime(.user), try benchmark.runtime(.kernelEmulation)])
        }
        func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
        printLine("")
        printLine("| path | p50 µs | p99 µs | p50 ÷ baseline | p99 ÷ baseline | ISR calls/s | interrupts/s | calls/s ÷ baseline |")
        printLine("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for column in 0..<3 {
            let results = rows.map { $0[column] }
            let p50 = median(results.map(\.p50)), p99 = median(results.map(\.p99))
            let ratio50 = median(rows.map { $0[column].p50 / $0[0].p50 })
            let ratio99 = median(rows.map { $0[column].p99 / $0[0].p99 })
            let calls = median(results.map(\.handlerCallsPerSecond))
            let interrupts = median(results.map(\.interruptsPerSecond))
            let callRatio = median(rows.map { $0[column].handlerCallsPerSecond / $0[0].handlerCallsPerSecond })
            printLine("| \(results[0].name) | \(fixed(p50, 1)) | \(fixed(p99, 1)) | \(fixed(ratio50, 2)) | \(fixed(ratio99, 2)) | \(Int(calls)) | \(Int(interrupts)) | \(fixed(callRatio, 2)) |")
        }
    }
}

func fixed(_ value: Double, _ digits: Int) -> String {
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let rounded = (value * scale).rounded() / scale
    var text = String(rounded)
    if let dot = text.firstIndex(of: ".") {
        let decimals = text.distance(from: dot, to: text.endIndex) - 1
        if decimals < digits { text += String(repeating: "0", count: digits - decimals) }
    } else if digits > 0 {
        text += "." + String(repeating: "0", count: digits)
    }
    return text
}

#if canImport(Glibc)
import Glibc
#endif
