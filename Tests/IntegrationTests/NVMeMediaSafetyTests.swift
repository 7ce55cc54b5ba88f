import Glibc
import ModelessBus
import ModelessSystem
import Testing

extension VM {
    /// `modeless run nvme` writes to the namespace only with --destructive. The namespace is
    /// filled with random data and hashed through the kernel's nvme driver (O_DIRECT) before
    /// and after each run, so that any write of other data shows.
    @Suite("run nvme leaves the media alone unless --destructive")
    struct NVMeMediaSafetyTests {
        @Test func readOnlyByDefaultAndWritesOnlyWhatItNamesWithDestructive() throws {
            let nvme = try TestBench.nvme()
            let binder = PCIBinder()
            var namespace = try KernelNVMe.namespace(of: nvme)
            let sectors = "/sys/class/block/\(namespace.split(separator: "/").last!)/size"
            let fill = try TestBench.shell("dd if=/dev/urandom of=\(namespace) bs=1M count=$(($(cat \(sectors)) / 2048)) oflag=direct status=none")
            #expect(fill.status == 0, "\(fill.output)")
            let whole = try KernelNVMe.sha256(namespace)
            let firstMiB = try KernelNVMe.sha256(namespace, countMiB: 1)
            let firstTwoMiB = try KernelNVMe.sha256(namespace, countMiB: 2)
            let rest = try KernelNVMe.sha256(namespace, skipMiB: 2)

            // Without --destructive: Identify and a read check, nothing written.
            let bound = try TestBench.modeless("bind", nvme.description)
            #expect(bound.status == 0, "\(bound.output)")
            do {
                defer { _ = try? binder.unbind(.address(nvme)) }
                let run = try TestBench.modeless("run", "nvme", nvme.description)
                #expect(run.status == 0, "\(run.output)")
                #expect(run.output.contains("read check: 1 MiB from block 0") && run.output.contains("nothing written"), "\(run.output)")
                #expect(run.output.contains("sha256 \(firstMiB)"), "the driver's read of the first MiB differs from the kernel's: \(run.output)")
                #expect(!run.output.contains("verify:") && !run.output.contains("--destructive:"), "\(run.output)")

                let refused = try TestBench.modeless("run", "nvme", nvme.description, "--verify-mib", "2")
                #expect(refused.status == 64, "\(refused.output)")
                #expect(refused.output.contains("add --destructive"), "\(refused.output)")
            }
            namespace = try KernelNVMe.namespace(of: nvme)
            #expect(try KernelNVMe.sha256(namespace) == whole, "run nvme without --destructive changed the namespace")

            // With --destructive: it names the range, then writes, reads back and verifies it.
            #expect(try TestBench.modeless("bind", nvme.description).status == 0)
            do {
                defer { _ = try? binder.unbind(.address(nvme)) }
                let run = try TestBench.modeless("run", "nvme", nvme.description, "--destructive", "--verify-mib", "2")
                #expect(run.status == 0, "\(run.output)")
                let lines = run.output.split(separator: "\n")
                let notice = lines.firstIndex { $0.hasPrefix("--destructive: overwriting namespace 1") }
                let verified = lines.firstIndex { $0.hasPrefix("verify:") && $0.hasSuffix("identical") }
                #expect(notice != nil && verified != nil && notice! < verified!, "\(run.output)")
                #expect(run.output.contains("LBA 0-4095 (4096 blocks, 2097152 bytes)"), "\(run.output)")
                #expect(run.output.contains("before any write"), "\(run.output)")
            }
            namespace = try KernelNVMe.namespace(of: nvme)
            #expect(try KernelNVMe.sha256(namespace, countMiB: 2) != firstTwoMiB, "--destructive did not change the range it named")
            #expect(try KernelNVMe.sha256(namespace, skipMiB: 2) == rest, "--destructive wrote outside the range it named")
        }
    }
}
