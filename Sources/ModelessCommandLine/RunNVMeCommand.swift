import ArgumentParser
import ModelessDrivers
import ModelessRuntime
import ModelessServices

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
        var configuration = NVMeRun.Configuration(device: device)
        configuration.mode = mode
        configuration.completion = irq
        configuration.namespace = namespaceOption.namespace
        configuration.readMiB = readMiB
        configuration.readTo = readTo
        configuration.writeMiB = writeMiB
        configuration.verify = verification.verify
        try hosting { try NVMeRun(configuration, report: .console).run() }
    }
}
