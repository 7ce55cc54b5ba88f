import ModelessBus
import ModelessSystem
import ModelessUblk
import Testing

#if canImport(Glibc)
import Glibc
#endif

extension VM {
    /// The user-mode NVMe driver serving the kernel as `/dev/ublkbN`
    /// (`modeless serve nvme ADDR --ublk`): the kernel's own tools on it, in both modes, and
    /// the refusals.
    @Suite(
        "ublk: the NVMe driver as a kernel block device",
        .serialized,
        .enabled(if: FileAccess.exists(UblkInterface.controlPath),
                 "needs /dev/ublk-control: a kernel with ublk_drv (Debian's 6.12, which scripts/setup installs)"))
    struct UblkNVMeTests {
        /// Binds the controller to vfio-pci for `body` and gives it back afterwards.
        static func withBoundController(_ body: (PCIAddress) throws -> Void) throws {
            let nvme = try TestBench.nvme()
            let binder = PCIBinder()
            _ = try binder.bind(.address(nvme), to: .vfioPCI, force: true)
            defer { _ = try? binder.unbind(.address(nvme)) }
            try body(nvme)
        }

        /// Starts `modeless serve nvme ADDR --ublk ARGS`; returns it and its block device.
        static func startServer(_ nvme: PCIAddress, _ arguments: [String] = [], environment: [String: String]) throws -> (ChildProcess, String) {
            let server = try ChildProcess(try ProgramRunner.builtProgram("modeless"), ["serve", "nvme", "\(nvme)", "--ublk"] + arguments,
                                          environment: environment)
            let line = server.readLine(timeout: 120) ?? ""
            print("ublk-nvme: \(line)")
            try #require(line.hasPrefix("serving \(nvme)") && line.contains(" as /dev/ublkb"), "\(line)")
            return (server, blockDevice(in: line)!)
        }

        /// `/dev/ublkbN` from a `serving ... as /dev/ublkbN ...` line.
        static func blockDevice(in line: String) -> String? {
            let words = line.split(separator: " ")
            guard let at = words.firstIndex(of: "as"), at + 1 < words.count else { return nil }
            return String(words[at + 1].filter { $0 != "," })
        }

        @Test(arguments: ["user", "kernel-emulation"])
        func ext4AndFioOnTheNVMeDriver(_ mode: String) throws {
            let environment = UblkExportTests.containerEnvironment()
            let before = UblkExportTests.ublkDevices()
            try Self.withBoundController { nvme in
                let (server, device) = try Self.startServer(nvme, ["--mode", mode], environment: environment)
                defer {
                    server.signal(SIGTERM)
                    #expect(UblkExportTests.exitStatus(server) == 0)
                    #expect(UblkExportTests.ublkDevices() == before, "SIGTERM removed the device")
                }
                let name = device.dropFirst(5)
                #expect(FileAccess.readTextIfPresent("/sys/block/\(name)/size")?.trimmingBlanks() == "262144", "128 MiB in 512-byte sectors")
                try Ext4RoundTrip.run(on: device, mebibytes: 8, scratch: "ublk-nvme", environment: environment)

                // Random writes then reads on the raw device, every block checked.
                let job = "--name=verify --filename=\(device) --ioengine=io_uring --direct=1 --bs=4k --size=16M --offset=96M "
                    + "--iodepth=32 --rw=randwrite --verify=crc32c --randrepeat=1 --verify_state_save=0 --do_verify=1"
                let fio = try UblkExportTests.shellWith(environment, "cd /tmp && test -b \(device) && timeout 600 fio \(job)")
                #expect(fio.status == 0, "\(fio.output)")
                #expect(!fio.output.contains("verify: bad"), "\(fio.output)")

                // The controller offers Dataset Management and Write Zeroes: discard and zeroing work,
                // and zeroing reads back as zeroes.
                let ranges = try UblkExportTests.shellWith(environment, """
                    set -e
                    cat /sys/block/\(name)/queue/discard_max_bytes /sys/block/\(name)/queue/write_zeroes_max_bytes
                    blkdiscard -o 100663296 -l 1048576 \(device)
                    blkdiscard -z -o 101711872 -l 1048576 \(device)
                    [ "$(dd if=\(device) bs=1M skip=97 count=1 iflag=direct status=none | tr -d '\\0' | wc -c)" = 0 ]
                    """)
                #expect(ranges.status == 0, "\(ranges.output)")
                #expect(!ranges.output.hasPrefix("0\n"), "discard is offered: \(ranges.output)")
                #expect(server.exitStatusIfEnded() == nil)
            }
        }

        @Test func badRequestsAreRefusedAndLeaveNothing() throws {
            let environment = UblkExportTests.containerEnvironment()
            let before = UblkExportTests.ublkDevices()
            let modeless = try ProgramRunner.builtProgram("modeless")
            try Self.withBoundController { nvme in
                // QEMU's controller gives this driver one I/O queue of 64 entries: 63 in flight.
                let deep = try UblkExportTests.shellWith(environment, "\(modeless) serve nvme \(nvme) --ublk --queue-depth 1000 2>&1")
                #expect(deep.status == 64, "\(deep.output)")
                #expect(deep.output.contains("more than the controller can give") && deep.output.contains("--queue-depth 1-"), "\(deep.output)")
                #expect(UblkExportTests.ublkDevices() == before)

                let (server, device) = try Self.startServer(nvme, ["--irq", "intx"], environment: environment)
                let twice = try UblkExportTests.shellWith(environment, "\(modeless) serve nvme \(nvme) --ublk 2>&1")
                #expect(twice.status == 75, "\(twice.output)")
                #expect(twice.output.contains("already exported") && twice.output.contains(device), "\(twice.output)")
                let stillServing = try TestBench.shell("timeout 60 dd if=\(device) of=/dev/null bs=4096 count=16 iflag=direct 2>&1")
                #expect(stillServing.status == 0, "the first server still serves: \(stillServing.output)")
                server.signal(SIGTERM)
                #expect(UblkExportTests.exitStatus(server) == 0)
                #expect(UblkExportTests.ublkDevices() == before)

                let unload = try TestBench.shell("rmmod ublk_drv 2>&1")
                try #require(unload.status == 0, "\(unload.output)")
                let noDriver = try UblkExportTests.shellWith(environment, "\(modeless) serve nvme \(nvme) --ublk 2>&1")
                let reload = try TestBench.shell("modprobe ublk_drv 2>&1")
                #expect(noDriver.status == 69, "\(noDriver.output)")
                #expect(noDriver.output.contains("modprobe ublk_drv"), "\(noDriver.output)")
                #expect(reload.status == 0, "\(reload.output)")
                #expect(UblkExportTests.ublkDevices() == before)
            }
        }
    }
}
