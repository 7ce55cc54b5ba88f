import ModelessBus
import ModelessSystem
import Testing

#if canImport(Glibc)
import Glibc
#endif

extension VM {
    /// Fault containment on the real NVMe controller: the instance of the NVMe block provider
    /// holding the device through VFIO is killed with SIGKILL 100 times under a
    /// write-then-verify workload; the supervisor restarts it each time and the workload's
    /// requests fail over to the replacement.
    @Suite("Supervised NVMe provider killed 100 times")
    struct FailoverIntegrationTests {
        @Test func everyWriteIsAcknowledgedOnceAndEveryBlockVerifies() throws {
            let nvme = try TestBench.nvme()
            let binder = PCIBinder()
            _ = try binder.bind(.address(nvme), to: .vfioPCI, force: true)
            defer { _ = try? binder.unbind(.address(nvme)) }

            var template = Array("/tmp/mlf-XXXXXX".utf8CString)
            let root = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
            let config = root + "/storage.json"
            try FileAccess.replaceFile(config, with: Array("""
                {"service": "storage", "instances": 1, "stateDirectory": "\(root)/state",
                 "command": ["modeless", "serve", "nvme", "\(nvme)", "--device", "disk"]}
                """.utf8))
            let run = try ChildProcess(
                try ProgramRunner.builtProgram("modeless"),
                ["bench", "failover", "--config", config, "--device", "disk", "--destructive", "--kills", "100", "--blocks", "1024", "--max-delay-ms", "100"],
                environment: ["MODELESS_CONTAINER_DIR": root + "/containers"])
            var output: [String] = []
            while let line = run.readLine(timeout: 900) {
                output.append(line)
                if !line.hasPrefix("  [") { print("failover: \(line)") }
            }
            let text = output.joined(separator: "\n")
            #expect(try run.wait() == 0, "\(text)")
            #expect(output.contains { $0.hasPrefix("kills:") && $0.contains("100 of 100") }, "\(text)")
            #expect(output.contains { $0.hasPrefix("final verify:") && $0.hasSuffix(" 0 mismatched") }, "\(text)")
            #expect(output.contains { $0.hasPrefix("ok: every write acknowledged once") }, "\(text)")
            if let out = getenv("MODELESS_VM_OUT").map({ String(cString: $0) }) {
                try? FileAccess.replaceFile(out + "/failover.txt", with: Array(text.utf8))
            }
        }
    }
}
