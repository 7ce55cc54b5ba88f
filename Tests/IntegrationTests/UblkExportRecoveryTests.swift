import ModelessSystem
import ModelessUblk
import Testing

#if canImport(Glibc)
import Glibc
#endif

extension VM {
    /// ublk user recovery of `modeless export`: a memory disk in one process; `modeless
    /// supervise` runs `export mem/blk0 --ublk`; with ext4 mounted on `/dev/ublkbN` and files
    /// being written onto it, the export process is SIGKILLed `MODELESS_UBLK_EXPORT_KILLS`
    /// times (3 by default) at random moments. Each replacement takes the same `/dev/ublkbN`
    /// over (the requests in flight reissued): the writer sees no error, e2fsck finds the file
    /// system clean, every file's SHA-256 matches its source, and stopping the supervisor
    /// removes the device. Each kill's stall (SIGKILL to a direct read completing) stays under
    /// 20 s, which the kernel's default 30 s request timeout would not.
    @Suite(
        "ublk: recovery of an exported logical device under a mounted file system",
        .enabled(if: FileAccess.exists(UblkInterface.controlPath),
                 "needs /dev/ublk-control: a kernel with ublk_drv (Debian's 6.12, which scripts/setup installs)"))
    struct UblkExportRecoveryTests {
        /// The longest stall per kill accepted: well above the 2-6 s the process start and the
        /// takeover take in a loaded guest, well below the block layer's 30 s default timeout.
        static let stallBoundMilliseconds = 20_000.0

        static var kills: Int { getenv("MODELESS_UBLK_EXPORT_KILLS").flatMap { Int(String(cString: $0)) } ?? 3 }

        /// Reads the supervisor's output until its instance reports serving; returns the line.
        static func nextServing(_ supervisor: ChildProcess, _ log: inout [String]) -> String? {
            while let line = supervisor.readLine(timeout: 120) {
                log.append(line)
                if line.contains("] serving mem/blk0 as /dev/ublkb") { return line }
            }
            return nil
        }

        @Test func ext4OnAnExportOutlivesKilledExports() throws {
            let environment = UblkExportTests.containerEnvironment()
            let before = UblkExportTests.ublkDevices()
            let disk = try UblkExportTests.startMemoryDisk(blocks: 16384, blockSize: 4096, environment: environment)  // 64 MiB
            defer {
                disk.signal(SIGTERM)
                #expect(UblkExportTests.exitStatus(disk) == 0)
            }
            var template = Array("/tmp/mler-XXXXXX".utf8CString)
            let root = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
            let config = root + "/export.json"
            // The kills are deliberate: a start-limit window of 1 s keeps the supervisor's back-off
            // for instances that die soon after starting out of the stall.
            try FileAccess.replaceFile(config, with: Array("""
                {"service": "mexp", "instances": 1, "stateDirectory": "\(root)/state", "startLimitBurst": 1000, "startLimitIntervalSeconds": 1,
                 "command": ["modeless", "export", "mem/blk0", "--ublk"]}
                """.utf8))
            let supervisor = try ChildProcess(try ProgramRunner.builtProgram("modeless"), ["supervise", config], environment: environment)
            var log: [String] = []
            defer {
                supervisor.signal(SIGTERM)
                #expect(UblkExportTests.exitStatus(supervisor, within: 180) == 0, "\(log.suffix(20).joined(separator: "\n"))")
                #expect(UblkExportTests.ublkDevices() == before, "stopping the service removed the device")
                _ = try? TestBench.shell("rm -rf \(root)")
            }
            guard let first = Self.nextServing(supervisor, &log), var pid = UblkRecoveryTests.pid(in: first),
                  let device = UblkNVMeTests.blockDevice(in: first) else {
                Issue.record("the service did not start: \(log.joined(separator: "\n"))")
                return
            }
            let mountPoint = "/tmp/ublk-exrec-mnt", sources = "/tmp/ublk-exrec-src"
            let mount = try UblkExportTests.shellWith(environment, "set -e\n" + Ext4RoundTrip.makeAndMount(device, at: mountPoint))
            try #require(mount.status == 0, "\(mount.output)")
            defer { _ = try? TestBench.shell("umount \(mountPoint) 2>/dev/null; rm -rf \(sources) /tmp/ublk-exrec-stop") }

            // Files of 256 KiB written and synced one after another until told to stop; a
            // failed write or sync ends the writer with its status.
            let writer = try ChildProcess("/bin/sh", ["-c", """
                set -e
                rm -rf \(sources) /tmp/ublk-exrec-stop; mkdir -p \(sources)
                i=0
                while [ ! -e /tmp/ublk-exrec-stop ]; do
                    i=$((i + 1))
                    head -c 262144 /dev/urandom > \(sources)/$i
                    cp \(sources)/$i \(mountPoint)/$i
                    sync \(mountPoint)/$i
                done
                echo "wrote $i files"
                """], environment: environment)
            var stalls: [Double] = []
            var generator = SystemRandomNumberGenerator()
            // The writer's files so far (each is made before it is copied onto ext4).
            func written() -> Int { ((try? FileAccess.listDirectory(sources)) ?? []).count }
            var progress = 0
            for kill in stride(from: 1, through: Self.kills, by: 1) {
                // Each kill comes once the writer has moved on since the last one, while it writes.
                let deadline = monotonicNanoseconds() + 120_000_000_000
                while written() < progress + 2 && writer.exitStatusIfEnded() == nil && monotonicNanoseconds() < deadline { usleep(50_000) }
                progress = written()
                usleep(UInt32.random(in: 100_000...800_000, using: &generator))
                let start = monotonicNanoseconds()
                Glibc.kill(pid, SIGKILL)
                let probe = try TestBench.shell("timeout 120 dd if=\(device) of=/dev/null bs=4096 count=1 skip=\(kill * 7) iflag=direct 2>&1")
                let stall = Double(monotonicNanoseconds() - start) / 1e6
                #expect(probe.status == 0, "kill \(kill): the read after it failed: \(probe.output)")
                // With the kernel's 30 s request timeout a queue whose every tag the dead export
                // had taken held the device until then (30-33 s); with the export's 1 s, 2-6 s.
                #expect(stall < Self.stallBoundMilliseconds, "kill \(kill): a stall of \(Int(stall)) ms")
                guard let serving = Self.nextServing(supervisor, &log), let next = UblkRecoveryTests.pid(in: serving), next != pid else {
                    Issue.record("kill \(kill): no replacement reported serving: \(log.suffix(20).joined(separator: "\n"))")
                    break
                }
                #expect(serving.contains("recovered from state"), "kill \(kill): the replacement recovered the device: \(serving)")
                #expect(UblkNVMeTests.blockDevice(in: serving) == device, "\(serving)")
                pid = next
                stalls.append(stall)
                let entered = UblkRecoveryTests.entered(in: serving).map { Int(($0 - Double(start) / 1e6).rounded()) }
                print("ublk-export-recovery: kill \(kill): stall \(Int(stall.rounded())) ms, replacement entered \(entered.map { "\($0) ms" } ?? "?") after the kill; \(serving)")
            }
            _ = try TestBench.shell("touch /tmp/ublk-exrec-stop")
            let writerStatus = UblkExportTests.exitStatus(writer, within: 300)
            var writerOutput: [String] = []
            while let line = writer.readLine(timeout: 1) { writerOutput.append(line) }
            #expect(writerStatus == 0, "the writer saw no error: \(writerOutput.joined(separator: "\n"))")
            #expect(stalls.count == Self.kills, "\(log.suffix(30).joined(separator: "\n"))")

            let check = try UblkExportTests.shellWith(environment, """
                set -e
                \(Ext4RoundTrip.unmountAndCheck(device, at: mountPoint))
                mount -t ext4 -o ro \(device) \(mountPoint)
                cd \(sources)
                n=0
                for f in *; do
                    [ "$(sha256sum < $f)" = "$(sha256sum < \(mountPoint)/$f)" ] || { echo "file $f differs"; exit 1; }
                    n=$((n + 1))
                done
                echo "$n files match"
                cd /
                umount \(mountPoint)
                """)
            #expect(check.status == 0, "\(check.output)")
            let sorted = stalls.sorted()
            print("ublk-export-recovery: \(writerOutput.last ?? ""), \(check.output.split(separator: "\n").last(where: { $0.hasSuffix("match") }) ?? ""); "
                  + (sorted.isEmpty ? "no kills" : "kills \(sorted.count), stall p50 \(Int(sorted[sorted.count / 2].rounded())) ms, max \(Int(sorted.last!.rounded())) ms"))
        }
    }
}
