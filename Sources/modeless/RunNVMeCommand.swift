import ArgumentParser
import ModelessBus
import ModelessDevice
import ModelessDrivers
import ModelessRuntime
import ModelessSystem

extension NVMeController.Completion: ExpressibleByArgument {}

struct RunNVMe: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nvme",
        abstract: "Run the NVMe driver: print Identify data, then write, read back and verify a random pattern.",
        discussion: "The controller must be bound to vfio-pci (`modeless bind ADDR`). The pattern overwrites the start of namespace 1.")

    @Argument(help: "The NVMe controller: 0000:00:06.0, 00:06.0 or 1b36:0010.")
    var device: String

    @Option(help: "Execution mode: user or kernel-emulation.")
    var mode: ExecutionMode = .user

    @Option(help: "How completions are noticed: msix, msi, intx or poll.")
    var irq: NVMeController.Completion = .msix

    @Option(name: .customLong("verify-mib"), help: "MiB to write, read back and verify (0 to skip).")
    var verifyMiB = 8

    @Option(name: .customLong("read-to"), help: "Before the verify pass, copy the namespace's first --read-mib MiB to this file.")
    var readTo: String?

    @Option(name: .customLong("read-mib"), help: "MiB to copy with --read-to.")
    var readMiB = 16

    func run() throws {
        try withBoundDevice(device, mode: mode) { address, access, runtime in
            let controller = try NVMeController(device: access, runtime: runtime, completion: irq)
            defer { controller.stop() }
            let identity = controller.identity!
            printLine("nvme on \(access.backendName) \(address), \(runtime.mode) mode, \(irq) completions")
            printLine("model:      \(identity.modelNumber)")
            printLine("serial:     \(identity.serialNumber)")
            printLine("firmware:   \(identity.firmwareRevision)")
            printLine("namespaces: \(identity.namespaces.count) active (NN \(identity.namespaceLimit))")
            for namespace in identity.namespaces {
                printLine("namespace \(namespace.identifier): \(namespace.blockCount) blocks of \(namespace.blockSize) bytes (\((namespace.blockCount * UInt64(namespace.blockSize)) >> 20) MiB)")
            }
            printLine("max transfer: \(controller.maximumTransfer / 1024) KiB per command")
            if let readTo { try copyOut(controller, to: readTo) }
            guard verifyMiB > 0 else { return }
            let total = verifyMiB << 20
            let chunk = controller.maximumTransfer
            let blocksPerChunk = chunk / identity.blockSize
            var generator = PatternGenerator(seed: 0x5eed)
            let start = monotonicNanoseconds()
            for offset in stride(from: 0, to: total, by: chunk) {
                try controller.write(lba: UInt64(offset / identity.blockSize), generator.bytes(chunk))
            }
            try controller.flush()
            let written = monotonicNanoseconds()
            generator = PatternGenerator(seed: 0x5eed)
            for offset in stride(from: 0, to: total, by: chunk) {
                let back = try controller.read(lba: UInt64(offset / identity.blockSize), blocks: blocksPerChunk)
                guard back == generator.bytes(chunk) else {
                    printError("verify failed in the \(chunk)-byte chunk at offset \(offset)")
                    throw ExitCode(1)
                }
            }
            let read = monotonicNanoseconds()
            func rate(_ nanoseconds: UInt64) -> String { fixed(Double(total) / 1_048_576 / (Double(nanoseconds) / 1e9), 1) }
            printLine("verify:     \(verifyMiB) MiB written (\(rate(written - start)) MiB/s), read back (\(rate(read - written)) MiB/s), identical")
            printLine("ISR:        \(controller.isrCalls) calls")
        }
    }
}

extension RunNVMe {
    /// Reads the first `readMiB` MiB of namespace 1 into the file `path`.
    func copyOut(_ controller: NVMeController, to path: String) throws {
        let total = readMiB << 20
        let chunk = controller.maximumTransfer
        var bytes: [UInt8] = []
        bytes.reserveCapacity(total)
        for offset in stride(from: 0, to: total, by: chunk) {
            let blocks = min(chunk, total - offset) / controller.identity.blockSize
            bytes += try controller.read(lba: UInt64(offset / controller.identity.blockSize), blocks: blocks)
        }
        try FileAccess.replaceFile(path, with: bytes)
        printLine("read:       \(readMiB) MiB from block 0 into \(path)")
    }
}

/// A reproducible pseudo-random byte stream (xorshift64*), so a written pattern can be regenerated to verify it.
struct PatternGenerator {
    private var state: UInt64

    init(seed: UInt64) { state = seed | 1 }

    mutating func bytes(_ count: Int) -> [UInt8] {
        var result = [UInt8](repeating: 0, count: count)
        var index = 0
        while index < count {
            state ^= state >> 12
            state ^= state << 25
            state ^= state >> 27
            var word = state &* 0x2545_F491_4F6C_DD1D
            for _ in 0..<8 where index < count {
                result[index] = UInt8(truncatingIfNeeded: word)
                word >>= 8
                index += 1
            }
        }
        return result
    }
}
