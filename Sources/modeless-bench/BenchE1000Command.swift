import ArgumentParser
import ModelessCommandLine
import ModelessDevice
import ModelessDrivers
import ModelessRuntime
import ModelessServices
import ModelessSystem

struct BenchE1000: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "e1000",
        abstract: "60-byte frames/s sent by the e1000 driver in batches.",
        discussion: """
            Sends 60-byte frames (without FCS) to --to as fast as the transmit ring takes them, in \
            batches filled in place in the DMA buffers, for SECONDS, and prints the frames sent per \
            second as the NIC counted them (its GPTC register), and the register (MMIO) accesses per frame \
            sent: each is a trap under emulation. The NIC writes back every --report-every-th descriptor \
            (and the last of each batch). scripts/bench/e1000-vs-peers compares it with pktgen (burst 32, \
            clone_skb) and DPDK's testpmd on the same NIC, in one VM boot.
            """)

    @Argument(help: "The e1000 NIC, bound to vfio-pci.")
    var device: String

    @Option(help: "Execution mode: user or kernel-emulation.")
    var mode: ExecutionMode = .user

    @Option(help: "Destination MAC address, as 52:54:00:12:34:02.")
    var to: String

    @Option(help: "Seconds to send for.")
    var seconds = 5.0

    @Option(help: "Frames per batch (one tail write each).")
    var batch = 32

    @Option(help: "Descriptors per ring (a multiple of 8, 8 to 4096).")
    var ring = 1024

    @Option(help: "Ask the NIC to write back every Nth transmit descriptor (RS; 1 to half the ring; default: the driver's, 32).")
    var reportEvery: Int?

    @OptionGroup var output: BenchOutputOptions

    func validate() throws {
        guard Self.mac(to) != nil else { throw ValidationError("--to must be a MAC address such as 52:54:00:12:34:02, not \(to)") }
        guard seconds > 0 else { throw ValidationError("--seconds must be positive") }
        guard batch > 0 else { throw ValidationError("--batch must be positive") }
    }

    static func mac(_ text: String) -> [UInt8]? {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        let bytes = parts.compactMap { $0.count == 2 ? UInt8($0, radix: 16) : nil }
        return parts.count == 6 && bytes.count == 6 ? bytes : nil
    }

    func run() throws {
        let destination = Self.mac(to)!
        var results = BenchResults(benchmark: "e1000", parameters: [
            "device": device, "mode": "\(mode)", "to": to, "seconds": "\(seconds)", "batch": "\(batch)", "ring": "\(ring)"])
        try withBoundDevice(device, mode: mode) { _, access, runtime in
            let driver = try E1000Driver(device: access, runtime: runtime, receive: .caller, ringSize: ring,
                                         transmitReportInterval: reportEvery)
            defer { driver.stop() }
            for _ in 0..<5000 where !driver.linkUp { usleep(1000) }
            let source = driver.macAddress
            _ = driver.framesTransmittedByNIC()  // Clears the NIC's counter.
            var sequence: UInt32 = 0
            let testFrame = TestFrame(to: destination, from: source)
            let start = monotonicNanoseconds()
            let end = start + UInt64(seconds * 1e9)
            var sent = 0
            while monotonicNanoseconds() < end {
                // The batch form: the fill and the driver's per-frame work inline into this loop.
                let first = sequence
                let queued = try driver.transmitBatch(upTo: batch) { frames in
                    frames.appendAll { index, frame in testFrame.fill(&frame, sequence: first &+ UInt32(truncatingIfNeeded: index)) }
                }
                sequence &+= UInt32(truncatingIfNeeded: queued)
                sent += queued
                if queued == 0 { sched_yield() }
            }
            let elapsed = Double(monotonicNanoseconds() - start) / 1e9
            usleep(20_000)  // Lets the NIC finish the frames already on the ring.
            let counted = driver.framesTransmittedByNIC()
            // The run's register accesses: one tail write per batch, and the two GPTC reads.
            let accesses = Double(driver.transmitBatches + 2) / Double(max(sent, 1))
            printLine("| path | frames sent | NIC counted | seconds | 60-byte frames/s (NIC counted) | MMIO accesses per frame |")
            printLine("| --- | ---: | ---: | ---: | ---: | ---: |")
            printLine("| Modeless e1000, \(mode), batches of \(batch), RS every \(driver.transmitReportInterval) | \(sent) | \(counted) "
                      + "| \(fixed(elapsed, 2)) | \(Int(Double(counted) / elapsed)) | \(fixed(accesses, 3)) |")
            results.add("Modeless e1000, \(mode), batches of \(batch), RS every \(driver.transmitReportInterval)", [
                "framesSent": Double(sent), "framesCountedByNIC": Double(counted), "seconds": elapsed,
                "framesPerSecond": Double(counted) / elapsed, "mmioAccessesPerFrame": accesses])
        }
        try output.finish(results)
    }
}

/// The benches' 60-byte test frame: destination and source MAC addresses, the IEEE local
/// experimental EtherType 0x88B5, a big-endian 32-bit sequence number, then zeros. Built once;
/// each frame is the template copied in (one copy, as DPDK's txonly copies its header
/// template into every packet) and its sequence number set. The template is a fixed-size
/// value, so the copy is a few vector moves of a known length rather than a call.
struct TestFrame {
    /// The 60 bytes of every test frame (without FCS), sequence number 0.
    let template: InlineArray<60, UInt8>

    init(to destination: [UInt8], from source: [UInt8]) {
        let header = destination + source + [0x88, 0xB5]
        template = InlineArray { index in index < header.count ? header[index] : 0 }
    }

    @inline(__always)
    func fill(_ frame: inout DMAByteWriter, sequence: UInt32) {
        withUnsafeBytes(of: template) { frame.copy(from: $0, at: 0) }
        frame.setBigEndian32(sequence, at: 14)
    }
}

#if canImport(Glibc)
import Glibc
#endif
