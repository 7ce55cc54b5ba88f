import ArgumentParser
import ModelessBus
import ModelessCommandLine
import ModelessDevice
import ModelessDrivers
import ModelessRuntime
import ModelessSystem

extension NVMeController.Completion: ExpressibleByArgument {}

struct RunNVMe: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nvme",
        abstract: "Run the NVMe driver: print Identify data and check that a namespace reads (read-only unless --destructive).",
        discussion: """
            The controller must be bound to vfio-pci (`modeless bind ADDR`). By default nothing is written: \
            the driver reads the first --read-mib MiB of the namespace (--namespace N; default the first active one) \
            and prints their SHA-256 (compare it with `head -c N /dev/nvme0nN | sha256sum` under the kernel's driver). \
            With --destructive it then writes a \
            pseudo-random pattern over the first --verify-mib MiB (default 8), reads it back and verifies it, \
            overwriting what was there; it names the blocks before it writes.
            """)

    /// MiB the write/read/verify pass covers when --destructive is given without --verify-mib.
    static let defaultVerifyMiB = 8

    @Argument(help: "The NVMe controller: 0000:00:06.0, 00:06.0 or 1b36:0010.")
    var device: String

    @Option(help: "Execution mode: user or kernel-emulation.")
    var mode: ExecutionMode = .user

    @OptionGroup var verification: VerifyOption

    @OptionGroup var namespaceOption: NVMeNamespaceOption

    @Option(help: "How completions are noticed: msix, msi, intx or poll.")
    var irq: NVMeController.Completion = .msix

    @Flag(help: "Allow writing to the namespace: write, read back and verify a pattern over its first --verify-mib MiB, destroying what was there.")
    var destructive = false

    @Option(name: .customLong("verify-mib"), help: "MiB to write, read back and verify from block 0 (needs --destructive; default 8 with it, 0 skips the pass).")
    var verifyMiB: Int?

    @Option(name: .customLong("read-mib"), help: "MiB to read from block 0 for the read-only check (0 skips it).")
    var readMiB = 1

    @Option(name: .customLong("read-to"), help: "Also write the bytes the read-only check read to this file.")
    var readTo: String?

    func validate() throws {
        if let verifyMiB, verifyMiB < 0 { throw ValidationError("--verify-mib \(verifyMiB) is negative; give the MiB to write and verify, or 0") }
        if let verifyMiB, verifyMiB > 0, !destructive {
            throw ValidationError("""
                --verify-mib \(verifyMiB) writes over the first \(verifyMiB) MiB of namespace \(namespaceOption.namespace.map { "\($0)" } ?? "1"), destroying what is there; \
                add --destructive to allow it (without it, run nvme only reads)
                """)
        }
        if readMiB < 0 { throw ValidationError("--read-mib \(readMiB) is negative") }
        if readTo != nil && readMiB == 0 { throw ValidationError("--read-to needs --read-mib of at least 1") }
    }

    /// MiB the write/read/verify pass covers: 0 unless --destructive.
    var writeMiB: Int { destructive ? verifyMiB ?? Self.defaultVerifyMiB : 0 }

    func run() throws {
        let verifier = verification.makeVerifier()
        try withBoundDevice(device, mode: mode, verifier: verifier) { address, access, runtime in
            let controller = try NVMeController(device: access, runtime: runtime, completion: irq)
            defer { controller.stop() }
            let identity = controller.identity!
            let namespace = try namespaceOption.select(on: controller)
            let namespaceBytes = namespace.blockCount * UInt64(namespace.blockSize)
            printLine("nvme on \(access.backendName) \(address), \(runtime.mode) mode, \(irq) completions")
            printLine("model:      \(identity.modelNumber)")
            printLine("serial:     \(identity.serialNumber)")
            printLine("firmware:   \(identity.firmwareRevision)")
            printLine("namespaces: \(identity.namespaces.count) active (NN \(identity.namespaceLimit))")
            for namespace in identity.namespaces {
                printLine("namespace \(namespace.identifier): \(namespace.blockCount) blocks of \(namespace.blockSize) bytes (\((namespace.blockCount * UInt64(namespace.blockSize)) >> 20) MiB)")
            }
            printLine("max transfer: \(controller.maximumTransfer / 1024) KiB per command")
            for (option, mib) in [("--read-mib", readMiB), ("--verify-mib", writeMiB)] where UInt64(mib) << 20 > namespaceBytes {
                printError("\(option) \(mib) is larger than namespace \(namespace.identifier) (\(namespaceBytes >> 20) MiB); nothing was read or written")
                throw ExitCode(64)
            }
            if readMiB > 0 { try readCheck(controller, namespace) }
            if writeMiB > 0 { try writeReadVerify(controller, namespace, serial: identity.serialNumber) }
        }
        try verification.finish(verifier)
    }
}

extension RunNVMe {
    /// Reads the first `readMiB` MiB of `namespace`, prints their SHA-256, and with --read-to
    /// writes them to that file. Writes nothing to the device.
    func readCheck(_ controller: NVMeController, _ namespace: NVMeController.Namespace) throws {
        let total = readMiB << 20
        let chunk = controller.maximumTransfer
        let blockSize = namespace.blockSize
        var digest = SHA256()
        var copy: [UInt8] = []
        if readTo != nil { copy.reserveCapacity(total) }
        let start = monotonicNanoseconds()
        let progress = ProgressLine("read check:", total: readMiB, unit: "MiB read")
        for offset in stride(from: 0, to: total, by: chunk) {
            let bytes = try controller.read(lba: UInt64(offset / blockSize), blocks: min(chunk, total - offset) / blockSize,
                                            namespace: namespace.identifier)
            digest.update(bytes)
            if readTo != nil { copy += bytes }
            progress.update((offset + bytes.count) >> 20)
        }
        let elapsed = monotonicNanoseconds() - start
        printLine("read check: \(readMiB) MiB from block 0 of namespace \(namespace.identifier) (blocks 0-\(total / blockSize - 1)), sha256 \(digest.hexDigest()), \(fixed(Double(elapsed) / 1e6, 1)) ms, \(writeMiB > 0 ? "before any write" : "nothing written")")
        if let readTo {
            try FileAccess.replaceFile(readTo, with: copy)
            printLine("read:       \(readMiB) MiB from block 0 into \(readTo)")
        }
    }

    /// Writes a pseudo-random pattern over the first `writeMiB` MiB of `namespace`, flushes,
    /// reads it back and compares. Names what it overwrites before the first write.
    func writeReadVerify(_ controller: NVMeController, _ namespace: NVMeController.Namespace, serial: String) throws {
        let total = writeMiB << 20
        let chunk = controller.maximumTransfer
        let blockSize = namespace.blockSize
        let identifier = namespace.identifier
        printLine("--destructive: overwriting namespace \(identifier) of controller \(serial), LBA 0-\(total / blockSize - 1) (\(total / blockSize) blocks, \(total) bytes)")
        var generator = PatternGenerator(seed: 0x5eed)
        let start = monotonicNanoseconds()
        let writing = ProgressLine("verify:", total: writeMiB, unit: "MiB written")
        for offset in stride(from: 0, to: total, by: chunk) {
            try controller.write(lba: UInt64(offset / blockSize), generator.bytes(min(chunk, total - offset)), namespace: identifier)
            writing.update(min(total, offset + chunk) >> 20)
        }
        try controller.flush(namespace: identifier)
        let written = monotonicNanoseconds()
        generator = PatternGenerator(seed: 0x5eed)
        let reading = ProgressLine("verify:", total: writeMiB, unit: "MiB read back and compared")
        for offset in stride(from: 0, to: total, by: chunk) {
            let length = min(chunk, total - offset)
            defer { reading.update((offset + length) >> 20) }
            let back = try controller.read(lba: UInt64(offset / blockSize), blocks: length / blockSize, namespace: identifier)
            guard back == generator.bytes(length) else {
                printError("verify failed in the \(length)-byte chunk at offset \(offset)")
                throw ExitCode(1)
            }
        }
        let read = monotonicNanoseconds()
        func rate(_ nanoseconds: UInt64) -> String { fixed(Double(total) / 1_048_576 / (Double(nanoseconds) / 1e9), 1) }
        printLine("verify:     \(writeMiB) MiB of namespace \(identifier) written (\(rate(written - start)) MiB/s), read back (\(rate(read - written)) MiB/s), identical")
        printLine("ISR:        \(controller.isrCalls) calls")
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
