import ModelessDevice
import ModelessDrivers
import ModelessRuntime
import ModelessSystem

/// `modeless run nvme`: the NVMe driver on a controller bound to vfio-pci prints Identify data and
/// checks that a namespace reads; only when asked (``Configuration/writeMiB``) it writes,
/// reads back and verifies a pattern, destroying what was there.
package struct NVMeRun: HostedWork {
    /// What to run and how.
    package struct Configuration {
        /// The controller as the person named it (an address or vendor:device id).
        package var device: String
        /// The execution mode.
        package var mode: ExecutionMode = .user
        /// How completions are noticed.
        package var completion: NVMeController.Completion = .msix
        /// The namespace ID to work on; nil for the first active one.
        package var namespace: UInt32?
        /// MiB the read-only check reads from block 0 (0 skips it).
        package var readMiB = 1
        /// A file the read-only check's bytes are also written to.
        package var readTo: String?
        /// MiB the write/read/verify pass covers from block 0, destroying them (0: nothing is written).
        package var writeMiB = 0
        /// Whether the driver runs under the verifier.
        package var verify = false

        /// The read-only run on `device`, with the defaults.
        package init(device: String) { self.device = device }
    }

    /// What to run.
    package var configuration: Configuration
    /// Where the run reports.
    package var report: HostReport

    var readMiB: Int { configuration.readMiB }
    var writeMiB: Int { configuration.writeMiB }
    var readTo: String? { configuration.readTo }

    /// The run of `configuration`, reporting to `report`.
    package init(_ configuration: Configuration, report: HostReport) {
        self.configuration = configuration
        self.report = report
    }

    /// Runs the driver: Identify, the read-only check and, when asked, the write/read/verify
    /// pass. A size larger than the namespace ends with 64 before any I/O; a mismatch with 1.
    package func run() throws {
        let verifier = makeVerifier(configuration.verify)
        let irq = configuration.completion
        try withBoundDevice(configuration.device, mode: configuration.mode, verifier: verifier) { address, access, runtime in
            let controller = try NVMeController(device: access, runtime: runtime, completion: irq)
            defer { controller.stop() }
            let identity = controller.identity!
            let namespace = try selectNamespace(configuration.namespace, on: controller)
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
                throw HostExit(64)
            }
            if readMiB > 0 { try readCheck(controller, namespace) }
            if writeMiB > 0 { try writeReadVerify(controller, namespace, serial: identity.serialNumber) }
        }
        try finishVerification(verifier)
    }
}

extension NVMeRun {
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
        let progress = ProgressLine("read check:", total: readMiB, unit: "MiB read", report: report.line)
        for offset in stride(from: 0, to: total, by: chunk) {
            let bytes = try controller.read(lba: UInt64(offset / blockSize), blocks: min(chunk, total - offset) / blockSize,
                                            namespace: namespace.identifier)
            digest.update(bytes)
            if readTo != nil { copy += bytes }
            progress.update((offset + bytes.count) >> 20)
        }
        let elapsed = monotonicNanoseconds() - start
        printLine("read check: \(readMiB) MiB from block 0 of namespace \(namespace.identifier) (blocks 0-\(total / blockSize - 1)), sha256 \(digest.hexDigest()), \(millisecondsText(elapsed)) ms, \(writeMiB > 0 ? "before any write" : "nothing written")")
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
        let writing = ProgressLine("verify:", total: writeMiB, unit: "MiB written", report: report.line)
        for offset in stride(from: 0, to: total, by: chunk) {
            try controller.write(lba: UInt64(offset / blockSize), generator.bytes(min(chunk, total - offset)), namespace: identifier)
            writing.update(min(total, offset + chunk) >> 20)
        }
        try controller.flush(namespace: identifier)
        let written = monotonicNanoseconds()
        generator = PatternGenerator(seed: 0x5eed)
        let reading = ProgressLine("verify:", total: writeMiB, unit: "MiB read back and compared", report: report.line)
        for offset in stride(from: 0, to: total, by: chunk) {
            let length = min(chunk, total - offset)
            defer { reading.update((offset + length) >> 20) }
            let back = try controller.read(lba: UInt64(offset / blockSize), blocks: length / blockSize, namespace: identifier)
            guard back == generator.bytes(length) else {
                printError("verify failed in the \(length)-byte chunk at offset \(offset)")
                throw HostExit(1)
            }
        }
        let read = monotonicNanoseconds()
        func rate(_ nanoseconds: UInt64) -> String { fixed(Double(total) / 1_048_576 / (Double(nanoseconds) / 1e9), 1) }
        printLine("verify:     \(writeMiB) MiB of namespace \(identifier) written (\(rate(written - start)) MiB/s), read back (\(rate(read - written)) MiB/s), identical")
        printLine("ISR:        \(controller.isrCalls) calls")
    }
}

/// A reproducible pseudo-random byte stream (xorshift64*), so a written pattern can be regenerated to verify it.
package struct PatternGenerator {
    private var state: UInt64

    /// The stream that starts from `seed`.
    package init(seed: UInt64) { state = seed | 1 }

    /// The next `count` bytes of the stream.
    package mutating func bytes(_ count: Int) -> [UInt8] {
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
