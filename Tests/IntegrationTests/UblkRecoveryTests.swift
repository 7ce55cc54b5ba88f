import ModelessBus
import ModelessSystem
import ModelessUblk
import Testing

#if canImport(Glibc)
import Glibc
#endif

extension VM {
    /// ublk user recovery under a mounted file system: `modeless supervise` runs
    /// `serve nvme ADDR --ublk`; with ext4 mounted on `/dev/ublkbN` and fio writing with
    /// verification into a file on it, the driver process is killed with SIGKILL
    /// `MODELESS_UBLK_KILLS` times (10 by default) at random moments. Each replacement
    /// re-takes the controller and recovers the ublk device (requests in flight reissued):
    /// fio ends without a verify error and e2fsck finds the file system clean. The stall per
    /// kill (SIGKILL to the completion of a 4 KiB direct read issued right after it, from this
    /// process) is printed, with its median and maximum.
    ///
    /// By default the supervisor keeps a warm standby (`"standby": true`) and each kill comes
    /// once the standby waits; `MODELESS_UBLK_STANDBY=0` measures the plain restart instead
    /// (no back-off either way: `restartMaxDelaySeconds` 0). With the standby, each replacement
    /// must have adopted the VFIO descriptors its predecessor handed over (not reopened the
    /// controller) and said what it made of the saved state handed over with them (at least
    /// half of the replacements must resume the controller without a reset), and once the supervisor has stopped, the controller's VFIO group must open
    /// again (no process, standby included, still holds it). `MODELESS_UBLK_BINARY` names the
    /// `modeless` to supervise with (e.g. `.build/release/modeless`; default: the one built
    /// beside the tests).
    @Suite(
        "ublk: recovery of the NVMe driver under a mounted file system",
        .enabled(if: FileAccess.exists(UblkInterface.controlPath),
                 "needs /dev/ublk-control: a kernel with ublk_drv (Debian's 6.12, which scripts/setup installs)"))
    struct UblkRecoveryTests {
        static var kills: Int { getenv("MODELESS_UBLK_KILLS").flatMap { Int(String(cString: $0)) } ?? 10 }
        /// The `modeless` the supervisor (and so every instance) runs: `MODELESS_UBLK_BINARY`
        /// (a release build, say), else the one built beside the tests.
        static func modeless() throws -> String {
            if let path = getenv("MODELESS_UBLK_BINARY") { return String(cString: path) }
            return try ProgramRunner.builtProgram("modeless")
        }
        static var standby: Bool { getenv("MODELESS_UBLK_STANDBY").map { String(cString: $0) != "0" } ?? true }

        /// The pid in a `serving ... pid N)` line.
        static func pid(in line: String) -> pid_t? {
            let words = line.split(separator: " ")
            guard let at = words.lastIndex(of: "pid"), at + 1 < words.count else { return nil }
            return pid_t(words[at + 1].prefix { $0.isNumber })
        }

        /// The CLOCK_MONOTONIC milliseconds at which a recovering server entered its command.
        static func entered(in line: String) -> Double? {
            let words = line.split(separator: " ")
            guard let at = words.firstIndex(of: "monotonic"), at + 1 < words.count else { return nil }
            return Double(words[at + 1])
        }

        /// Reads the supervisor's output until an instance reports serving; returns the line.
        static func nextServing(_ supervisor: ChildProcess, _ log: inout [String]) -> String? {
            nextLine(supervisor, &log) { $0.contains("] serving ") && $0.contains(" as /dev/ublkb") }
        }

        /// Reads the supervisor's output until a line matches; returns it.
        static func nextLine(_ supervisor: ChildProcess, _ log: inout [String], where matches: (String) -> Bool) -> String? {
            while let line = supervisor.readLine(timeout: 120) {
                log.append(line)
                if matches(line) { return line }
            }
            return nil
        }

        /// `O_DIRECT` on x86-64 and arm64's generic value (Glibc's module leaves it out without `_GNU_SOURCE`).
        static let directIO: Int32 = {
            #if arch(arm64)
            0o200000
            #else
            0o40000
            #endif
        }()

        /// Whether a line is a standby saying it waits.
        static func standbyWaits(_ line: String) -> Bool { line.contains("] standby for ") && line.contains("waiting for the serving process") }

        /// Reads 4 KiB at `offset` of `fd` (opened with O_DIRECT) in another thread, waiting at
        /// most `seconds`: true if the read completed with the whole block.
        static func timedRead(_ fd: Int32, offset: Int, seconds: Int32) throws -> Bool {
            var pipeEnds: [Int32] = [0, 0]
            guard pipe(&pipeEnds) == 0 else { return false }
            let (readEnd, writeEnd) = (pipeEnds[0], pipeEnds[1])
            let thread = try SystemThread(name: "ublk-probe") {
                var buffer: UnsafeMutableRawPointer?
                var byte: UInt8 = 0
                if posix_memalign(&buffer, 4096, 4096) == 0, let buffer {
                    byte = pread(fd, buffer, 4096, off_t(offset)) == 4096 ? 1 : 0
                    free(buffer)
                }
                _ = write(writeEnd, &byte, 1)
                close(writeEnd)
            }
            defer { close(readEnd) }
            var polled = pollfd(fd: readEnd, events: Int16(POLLIN), revents: 0)
            // A read that never completes leaves its thread blocked (the test fails anyway).
            guard poll(&polled, 1, seconds * 1000) == 1 else { return false }
            thread.join()
            var byte: UInt8 = 0
            return read(readEnd, &byte, 1) == 1 && byte == 1
        }

        @Test func ext4AndFioVerifyOutliveKilledDrivers() throws {
            let environment = UblkExportTests.containerEnvironment()
            let before = UblkExportTests.ublkDevices()
            try UblkNVMeTests.withBoundController { nvme in
                var template = Array("/tmp/mlr-XXXXXX".utf8CString)
                let root = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
                let config = root + "/storage.json"
                try FileAccess.replaceFile(config, with: Array("""
                    {"service": "ublk", "instances": 1, "stateDirectory": "\(root)/state", "startLimitBurst": 1000,
                     "restartMaxDelaySeconds": 0, "standby": \(Self.standby),
                     "command": ["modeless", "serve", "nvme", "\(nvme)", "--ublk"]}
                    """.utf8))
                let supervisor = try ChildProcess(try Self.modeless(), ["supervise", config], environment: environment)
                var log: [String] = []
                defer {
                    supervisor.signal(SIGTERM)
                    #expect(UblkExportTests.exitStatus(supervisor, within: 180) == 0, "\(log.joined(separator: "\n"))")
                    #expect(UblkExportTests.ublkDevices() == before, "stopping the service removed the device")
                    // Nothing holds the controller afterwards: not the last server, not the
                    // standby that held the descriptors handed to it.
                    if let group = try? PCIBus().device(at: nvme).iommuGroup {
                        var released = false
                        for _ in 0..<250 where !released {
                            let fd = open("/dev/vfio/\(group)", O_RDWR | O_CLOEXEC)
                            if fd >= 0 { close(fd); released = true } else { usleep(20_000) }
                        }
                        #expect(released, "stopping the service released the controller's VFIO group /dev/vfio/\(group)")
                    }
                }
                guard let first = Self.nextServing(supervisor, &log), var pid = Self.pid(in: first),
                      let device = UblkNVMeTests.blockDevice(in: first) else {
                    Issue.record("the service did not start: \(log.joined(separator: "\n"))")
                    return
                }
                let mount = try UblkExportTests.shellWith(environment, """
                    set -e
                    modprobe ext4
                    timeout 300 mkfs.ext4 -q -F \(device)
                    mkdir -p /tmp/ublk-rec-mnt
                    mount -t ext4 \(device) /tmp/ublk-rec-mnt
                    """)
                try #require(mount.status == 0, "\(mount.output)")
                let probe = open(device, O_RDONLY | Self.directIO | O_CLOEXEC)
                try #require(probe >= 0, "cannot open \(device): \(errno)")
                defer { close(probe) }

                // fio writes and verifies a file on ext4 for as long as the kills go on, round after round.
                let fioCommand = "cd /tmp && exec fio --name=rec --filename=/tmp/ublk-rec-mnt/fio --ioengine=io_uring --direct=1 --bs=4k "
                    + "--size=16M --iodepth=16 --rw=randwrite --verify=crc32c --do_verify=1 --verify_fatal=1 --randrepeat=0 --verify_state_save=0"
                var fio = try ChildProcess("/bin/sh", ["-c", fioCommand], environment: environment)
                var fioRounds = 0
                var fioFailures: [String] = []
                func endRound(_ run: ChildProcess) throws {
                    let status = try run.wait()
                    var output: [String] = []
                    while let line = run.readLine(timeout: 1) { output.append(line) }
                    fioRounds += 1
                    if status != 0 || output.contains(where: { $0.contains("verify: bad") || $0.contains("err=") && !$0.contains("err= 0") }) {
                        fioFailures.append("round \(fioRounds): status \(status)\n" + output.joined(separator: "\n"))
                    }
                }
                var stalls: [Double] = []
                var resumed = 0
                var generator = SystemRandomNumberGenerator()
                for kill in 1...Self.kills {
                    if Self.standby && Self.nextLine(supervisor, &log, where: Self.standbyWaits) == nil {
                        Issue.record("kill \(kill): no standby reported waiting: \(log.suffix(20).joined(separator: "\n"))")
                        break
                    }
                    usleep(UInt32.random(in: 300_000...1_500_000, using: &generator))
                    if fio.exitStatusIfEnded() != nil {
                        try endRound(fio)
                        fio = try ChildProcess("/bin/sh", ["-c", fioCommand], environment: environment)
                        usleep(200_000)
                    }
                    let logged = log.count
                    let start = monotonicNanoseconds()
                    Glibc.kill(pid, SIGKILL)
                    let read = try Self.timedRead(probe, offset: kill * 7 * 4096, seconds: 120)
                    let stall = Double(monotonicNanoseconds() - start) / 1e6
                    if !read {
                        // What the kernel says, and who holds the ublk character device still.
                        let state = try? UblkExportTests.shellWith(environment, """
                            dmesg | tail -n 40; ls -l /proc/[0-9]*/fd 2>/dev/null | grep -E 'ublkc|io_uring' | head -n 20; \
                            for t in /proc/[0-9]*/task/*; do s=$(cat $t/stat 2>/dev/null | cut -d' ' -f3); [ "$s" = D ] && echo "D: $t $(cat $t/comm) $(cat $t/wchan 2>/dev/null)"; done
                            """)
                        Issue.record("kill \(kill): the read after it failed or did not complete within 120 s; the kernel's state: \(state?.output ?? "unreadable")")
                    }
                    guard let serving = Self.nextServing(supervisor, &log), let next = Self.pid(in: serving), next != pid else {
                        Issue.record("kill \(kill): no replacement reported serving: \(log.suffix(20).joined(separator: "\n"))")
                        break
                    }
                    #expect(serving.contains("recovered"), "kill \(kill): the replacement recovered the device: \(serving)")
                    #expect(UblkNVMeTests.blockDevice(in: serving) == device, "\(serving)")
                    // The standby held the VFIO descriptors its predecessor handed over, and adopted them.
                    #expect(!Self.standby || serving.contains("(the device adopted in"), "kill \(kill): the standby opened the controller anew: \(serving)")
                    // The replacement looked at its predecessor's saved state (kept memory handed
                    // over) and resumed the controller from it, or said why not and reset it.
                    if Self.standby {
                        #expect(serving.contains("saved state: "), "kill \(kill): no saved state was handed over: \(serving)")
                        if serving.contains("saved state: resumed") { resumed += 1 }
                    }
                    pid = next
                    stalls.append(stall)
                    let startup = Self.entered(in: serving).map { Int(($0 - Double(start) / 1e6).rounded()) }
                    let claimed = log[logged...].first { $0.contains("claimed at monotonic") }.flatMap(Self.entered(in:))
                        .map { "; the standby took the claim \(Int(($0 - Double(start) / 1e6).rounded())) ms after the kill" } ?? ""
                    print("ublk-recovery: kill \(kill): stall \(Int(stall.rounded())) ms, replacement entered \(startup.map { "\($0) ms" } ?? "?") after the kill\(claimed); \(serving)")
                }
                let deadline = monotonicNanoseconds() + 600_000_000_000
                while fio.exitStatusIfEnded() == nil && monotonicNanoseconds() < deadline { usleep(100_000) }
                try endRound(fio)
                #expect(fioFailures.isEmpty, "\(fioFailures.joined(separator: "\n"))")
                #expect(stalls.count == Self.kills, "\(log.suffix(30).joined(separator: "\n"))")
                #expect(!Self.standby || resumed * 2 >= stalls.count, "only \(resumed) of \(stalls.count) replacements resumed the controller without a reset")

                let check = try UblkExportTests.shellWith(environment, """
                    set -e
                    umount /tmp/ublk-rec-mnt
                    timeout 300 e2fsck -f -n \(device)
                    """)
                #expect(check.status == 0, "\(check.output)")

                let sorted = stalls.sorted()
                let summary = sorted.isEmpty ? "no kills" : "kills \(sorted.count), fio rounds \(fioRounds), stall p50 \(Int(sorted[sorted.count / 2].rounded())) ms, "
                    + "max \(Int(sorted.last!.rounded())) ms" + (Self.standby ? ", resumed without a reset \(resumed)" : "")
                print("ublk-recovery: \(summary)")
                if let out = getenv("MODELESS_VM_OUT").map({ String(cString: $0) }) {
                    try? FileAccess.replaceFile(out + "/ublk-recovery.txt", with: Array((log + [summary]).joined(separator: "\n").utf8))
                }
            }
        }
    }
}
