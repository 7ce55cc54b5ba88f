import ModelessSystem
import ModelessUblk
import Testing

#if canImport(Glibc)
import Glibc
#endif

extension VM {
    /// A logical block device served to the kernel through ublk, and the kernel's own tools
    /// on it: `modeless serve memory-disk` in one process, `modeless export --ublk` in another,
    /// then mkfs.ext4, mount, a file copied and checked, e2fsck, and fio with verification.
    @Suite(
        "ublk: the kernel's tools on an exported logical device",
        .enabled(if: FileAccess.exists(UblkInterface.controlPath),
                 "needs /dev/ublk-control: a kernel with ublk_drv (Debian's 6.12, which scripts/setup installs; its 6.1 has no ublk)"))
    struct UblkExportTests {
        /// A private container directory and the environment that points the processes at it.
        static func containerEnvironment() -> [String: String] {
            var template = Array("/tmp/mlk-XXXXXX".utf8CString)
            let directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
            return ["MODELESS_CONTAINER_DIR": directory + "/containers"]
        }

        static func shellWith(_ environment: [String: String], _ script: String) throws -> ProgramResult {
            let exports = environment.map { "export \($0.key)='\($0.value)'; " }.joined()
            return try TestBench.shell(exports + script)
        }

        /// The ublk block devices that exist now.
        static func ublkDevices() -> [String] {
            ((try? FileAccess.listDirectory("/dev")) ?? []).filter { $0.hasPrefix("ublkb") || $0.hasPrefix("ublkc") }.sorted()
        }

        /// Starts `modeless export DEVICE --ublk ARGS` and returns it with its block device.
        static func startExport(_ device: String, _ arguments: [String] = [], environment: [String: String]) throws -> (ChildProcess, String) {
            let export = try ChildProcess(try ProgramRunner.builtProgram("modeless"), ["export", device, "--ublk"] + arguments, environment: environment)
            let line = export.readLine(timeout: 60) ?? ""
            try #require(line.hasPrefix("exported \(device) as /dev/ublkb"), "\(line)")
            let path = String(line.split(separator: " ")[3])
            return (export, path)
        }

        /// Waits up to `seconds` for `child` to exit; kills it after that (a hang is a failure, not a stuck suite).
        static func exitStatus(_ child: ChildProcess, within seconds: Double = 120) -> Int32? {
            let deadline = monotonicNanoseconds() + UInt64(seconds * 1e9)
            while monotonicNanoseconds() < deadline {
                if let status = child.exitStatusIfEnded() { return status }
                usleep(50_000)
            }
            child.signal(SIGKILL)
            _ = try? child.wait()
            return nil
        }

        /// Starts a memory disk provider of `blocks` blocks of `blockSize` bytes as mem/blk0.
        static func startMemoryDisk(blocks: Int, blockSize: Int, environment: [String: String]) throws -> ChildProcess {
            let disk = try ChildProcess(
                try ProgramRunner.builtProgram("modeless"),
                ["serve", "memory-disk", "--container", "mem", "--blocks", String(blocks), "--block-size", String(blockSize)],
                environment: environment)
            let line = disk.readLine(timeout: 60) ?? ""
            try #require(line.hasPrefix("serving mem/blk0"), "\(line)")
            return disk
        }

        @Test func ext4AndFioOnAnExportedMemoryDisk() throws {
            let environment = Self.containerEnvironment()
            let before = Self.ublkDevices()
            let disk = try Self.startMemoryDisk(blocks: 8192, blockSize: 4096, environment: environment)  // 32 MiB
            defer {
                disk.signal(SIGTERM)
                #expect(Self.exitStatus(disk) == 0)
            }
            var (export, device) = try Self.startExport("mem/blk0", environment: environment)
            #expect(FileAccess.readTextIfPresent("/sys/block/\(device.dropFirst(5))/size")?.trimmingBlanks() == "65536", "32 MiB in 512-byte sectors")

            try Ext4RoundTrip.run(on: device, mebibytes: 4, scratch: "ublk", environment: environment)

            // fio runs in /tmp (the working directory is read-only in the guest) and only on the
            // block device (were it gone, fio would write a regular file of that name).
            let job = "--name=verify --filename=\(device) --ioengine=io_uring --direct=1 --bs=4k --size=8M --offset=16M "
                + "--iodepth=16 --rw=randwrite --verify=crc32c --randrepeat=1 --verify_state_save=0"
            let fio = "cd /tmp && test -b \(device) && timeout 600 fio"
            let write = try Self.shellWith(environment, "\(fio) \(job) --do_verify=1")
            #expect(write.status == 0, "\(write.output)")
            #expect(!write.output.contains("verify: bad"), "\(write.output)")

            // The data stays in the provider: a new export of it reads back what fio wrote.
            export.signal(SIGINT)
            #expect(Self.exitStatus(export) == 0)
            #expect(Self.ublkDevices() == before, "SIGINT removed the device")
            (export, device) = try Self.startExport("mem/blk0", environment: environment)
            let verify = try Self.shellWith(environment, "\(fio) \(job) --verify_only")
            #expect(verify.status == 0, "\(verify.output)")

            export.signal(SIGTERM)
            #expect(Self.exitStatus(export) == 0)
            #expect(Self.ublkDevices() == before, "SIGTERM removed the device")
        }

        @Test func badRequestsAreRefusedAndLeaveNothing() throws {
            let environment = Self.containerEnvironment()
            let before = Self.ublkDevices()
            let modeless = try ProgramRunner.builtProgram("modeless")

            let missing = try Self.shellWith(environment, "\(modeless) export nowhere/blk0 --ublk 2>&1")
            #expect(missing.status == 66, "\(missing.output)")
            #expect(missing.output.contains("nowhere"), "\(missing.output)")
            #expect(Self.ublkDevices() == before)

            let disk = try Self.startMemoryDisk(blocks: 2048, blockSize: 512, environment: environment)
            defer {
                disk.signal(SIGTERM)
                #expect(Self.exitStatus(disk) == 0)
            }
            for depth in ["0", "5000"] {
                let refused = try Self.shellWith(environment, "\(modeless) export mem/blk0 --ublk --queue-depth \(depth) 2>&1")
                #expect(refused.status == 64, "\(refused.output)")
                #expect(refused.output.contains("1-4096"), "\(refused.output)")
                #expect(Self.ublkDevices() == before)
            }

            let (export, device) = try Self.startExport("mem/blk0", environment: environment)
            let twice = try Self.shellWith(environment, "\(modeless) export mem/blk0 --ublk 2>&1")
            #expect(twice.status == 75, "\(twice.output)")
            #expect(twice.output.contains("already exported") && twice.output.contains(device), "\(twice.output)")
            let stillServing = try TestBench.shell("timeout 60 dd if=\(device) of=/dev/null bs=4096 count=16 iflag=direct 2>&1")
            #expect(stillServing.status == 0, "the first export still serves: \(stillServing.output)")
            export.signal(SIGTERM)
            #expect(Self.exitStatus(export) == 0)
            #expect(Self.ublkDevices() == before)

            // Without the kernel's driver: the error says how to load it (then it is loaded again).
            let unload = try TestBench.shell("rmmod ublk_drv 2>&1")
            try #require(unload.status == 0, "\(unload.output)")
            let noDriver = try Self.shellWith(environment, "\(modeless) export mem/blk0 --ublk 2>&1")
            let reload = try TestBench.shell("modprobe ublk_drv 2>&1")
            #expect(noDriver.status == 69, "\(noDriver.output)")
            #expect(noDriver.output.contains("modprobe ublk_drv"), "\(noDriver.output)")
            #expect(reload.status == 0, "\(reload.output)")
            #expect(Self.ublkDevices() == before)
        }
    }
}
