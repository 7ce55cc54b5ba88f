import Glibc
import ModelessBus
import ModelessSystem
import Testing

extension VM {
    /// The re-plug rule of `udev/70-modeless.rules` under a real systemd-udevd on the hot-plug
    /// bench (`scripts/vm/run --hotplug`): a controller with a persistent override that is
    /// unplugged (`device_del`) and plugged back (`device_add`) returns to vfio-pci with no
    /// supervisor and no command, and a function without an override that udev sees added is
    /// left on its driver.
    @Suite("Persistent overrides applied on a re-plug by udev", .serialized,
           .enabled(if: HotplugBench.isAvailable, "needs scripts/vm/run --hotplug"))
    struct ReplugOverrideIntegrationTests {
        static let config = "/tmp/modeless-replug-config"
        static let stage = "/tmp/modeless-replug-rules"

        /// Runs `body` with the rules that scripts/install-udev-rules writes for the built
        /// binary and this test's configuration directory, under a systemd-udevd of its own.
        func withUdev(_ body: () throws -> Void) throws {
            let bindir = String(try ProgramRunner.builtProgram("modeless").split(separator: "/", omittingEmptySubsequences: false)
                .dropLast().joined(separator: "/"))
            let written = try TestBench.shell("""
                rm -rf \(Self.stage) && scripts/install-udev-rules --destdir \(Self.stage) --bindir \(bindir) --config-dir \(Self.config)
                """)
            defer { _ = try? TestBench.shell("rm -rf \(Self.stage)") }
            try #require(written.status == 0, "\(written.output)")
            let rules = try FileAccess.readText("\(Self.stage)/etc/udev/rules.d/70-modeless.rules")
            #expect(rules.contains("RUN+=\"\(bindir)/modeless overrides apply --device %k --config-dir \(Self.config)\""))
            try FileAccess.createDirectories("/run/udev/rules.d")
            try FileAccess.replaceFile("/run/udev/rules.d/70-modeless.rules", with: Array(rules.utf8))
            defer { _ = try? TestBench.shell("rm -f /run/udev/rules.d/70-modeless.rules") }
            let daemon = try TestBench.shell("""
                udevd=$(command -v systemd-udevd || echo /lib/systemd/systemd-udevd)
                setsid "$udevd" </dev/null >/tmp/udevd-replug.log 2>&1 & echo $!
                """)
            let pid = try #require(Int32(daemon.output.trimmingBlanks()), "systemd-udevd did not start: \(daemon.output)")
            defer {
                kill(pid, SIGTERM)
                for _ in 0..<300 where kill(pid, 0) == 0 { usleep(10_000) }
            }
            for _ in 0..<300 where !FileAccess.exists("/run/udev/control") { usleep(10_000) }
            try #require(FileAccess.exists("/run/udev/control"),
                         "systemd-udevd is not running: \(FileAccess.readTextIfPresent("/tmp/udevd-replug.log") ?? "")")
            try body()
        }

        @Test func aReplugGoesBackToItsOverridesDriver() throws {
            if HotplugBench.plugged() == nil {
                try #require(try HotplugBench.plug().contains("\"return\""))
                try #require(HotplugBench.wait(30) { HotplugBench.plugged() != nil }, "the NVMe did not appear")
            }
            let address = try HotplugBench.nvme()
            let edu = try TestBench.edu()
            _ = try TestBench.shell("rm -rf \(Self.config)")
            defer { _ = try? TestBench.shell("rm -rf \(Self.config)") }
            // As `modeless bind ADDR --persist --config-dir CONFIG` records it.
            try OverrideStore(configDirectory: Self.config).set(.init(driver: .vfioPCI), for: address)

            try withUdev {
                // A function without an override, seen added: nothing runs, its driver stays.
                let eduDriver = TestBench.driver(of: edu)
                _ = try TestBench.shell("udevadm trigger --action=add /sys/bus/pci/devices/\(edu) && udevadm settle --timeout=60")
                #expect(TestBench.driver(of: edu) == eduDriver)

                let unplugged = try HotplugBench.unplug()
                try #require(unplugged.contains("\"return\""), "device_del: \(unplugged)")
                try #require(HotplugBench.wait(30) { !HotplugBench.isPresent(address) }, "the NVMe was not removed")
                let replugged = try HotplugBench.plug()
                try #require(replugged.contains("\"return\""), "device_add: \(replugged)")
                let plugged = monotonicNanoseconds()
                let bound = HotplugBench.wait(30) { TestBench.driver(of: address) == UserModeDriver.vfioPCI.rawValue }
                print("device_add to vfio-pci by the udev rule: \((monotonicNanoseconds() - plugged) / 1_000_000) ms")
                _ = try? TestBench.shell("udevadm settle --timeout=60")
                #expect(bound, "the re-plugged NVMe is on \(TestBench.driver(of: address) ?? "no driver"), not vfio-pci: \(FileAccess.readTextIfPresent("/tmp/udevd-replug.log") ?? "")")
                #expect(TestBench.driver(of: edu) == eduDriver)
            }
            // Given back to the kernel, as the other hot-plug suites expect to find it.
            _ = try? TestBench.modeless("unbind", address.description)
        }
    }
}
