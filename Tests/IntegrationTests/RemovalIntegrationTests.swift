import Glibc
import FoundationEssentials
import ModelessBus
import ModelessLogical
import ModelessSupervision
import ModelessSystem
import Testing

extension VM {
    /// Removal on the hot-plug bench (`scripts/vm/run --hotplug`): QEMU's `device_del`
    /// (through the guest's pciehp) and `modeless unbind --release` while the NVMe driver runs
    /// I/O. The kernel's request reaches the driver (VFIO's device request interrupt), the
    /// driver fails its I/O with "device removed", releases the device, and the kernel
    /// completes the removal; `device_add` brings the controller back.
    @Suite("Removal on the hot-plug bench", .serialized, .enabled(if: HotplugBench.isAvailable, "needs scripts/vm/run --hotplug"))
    struct RemovalIntegrationTests {
        /// The bound the issue sets from the request to the driver's exit.
        static let exitBound: UInt64 = 10_000_000_000

        /// The hot-plug NVMe, present and bound to vfio-pci.
        func pluggedAndBound() throws -> PCIAddress {
            if HotplugBench.plugged() == nil {
                let reply = try HotplugBench.plug()
                try #require(reply.contains("\"return\""), "device_add: \(reply)")
                try #require(HotplugBench.wait(30) { HotplugBench.plugged() != nil }, "the re-plugged NVMe did not appear")
            }
            let address = try HotplugBench.nvme()
            if TestBench.driver(of: address) != UserModeDriver.vfioPCI.rawValue {
                _ = try PCIBinder().bind(.address(address), to: .vfioPCI)
            }
            return address
        }

        /// `bench nvme` with reads in flight until it is stopped or the device goes away.
        func startLoad(_ address: PCIAddress) throws -> ChildProcess {
            let load = try ChildProcess(try ProgramRunner.builtProgram("modeless"),
                                        ["bench", "nvme", address.description, "--seconds", "300", "--depths", "4"])
            // Before the table: the debug build's warning and the queue line.
            var seen: [String] = []
            var started = false
            while let line = load.readLine(timeout: 120) {
                if line.hasPrefix("| path |") { started = true; break }
                seen.append(line)
            }
            try #require(started, "the load did not start: \(seen.joined(separator: "\n"))")
            usleep(1_000_000)  // Reads in flight.
            return load
        }

        /// Waits for `load` to end; its status, output and the time from `start`.
        func finish(_ load: ChildProcess, since start: UInt64) -> (status: Int32?, output: String, nanoseconds: UInt64) {
            var lines: [String] = []
            while let line = load.readLine(timeout: 30) { lines.append(line) }
            let status = try? load.wait()
            return (status, lines.joined(separator: "\n"), monotonicNanoseconds() - start)
        }

        func kernelLogSince(_ mark: Int) throws -> String {
            let log = try TestBench.shell("dmesg").output
            return String(log.dropFirst(mark))
        }

        @Test func aHotUnplugDuringIOIsAnsweredAndTheControllerComesBack() throws {
            let address = try pluggedAndBound()
            let mark = try TestBench.shell("dmesg").output.count
            let load = try startLoad(address)
            let start = monotonicNanoseconds()
            let reply = try HotplugBench.unplug()
            #expect(reply.contains("\"return\""), "device_del: \(reply)")
            let (status, output, elapsed) = finish(load, since: start)
            print("device_del to exit: \(elapsed / 1_000_000) ms\n\(output)")
            #expect(status == 0, "\(output)")
            #expect(output.contains("device removed"), "\(output)")
            #expect(output.contains("failed with the removal"), "\(output)")
            #expect(elapsed < Self.exitBound, "exited \(elapsed / 1_000_000) ms after device_del")
            #expect(HotplugBench.wait(15) { !HotplugBench.isPresent(address) }, "the kernel did not complete the removal")
            let log = try kernelLogSince(mark)
            #expect(!log.contains("blocked until released"), "\(log)")
            #expect(!log.contains("No device request channel"), "\(log)")

            // Back: plugged again, bound, and the driver reads it.
            let back = try pluggedAndBound()
            #expect(back == address)
            let check = try TestBench.modeless("run", "nvme", back.description, "--read-mib", "1")
            #expect(check.status == 0, "\(check.output)")
        }

        /// `modeless unbind --release` while the driver reads: within 10 s from the
        /// command's start to the driver's exit, less only the debug build's own start (the same
        /// binary started and its arguments parsed, measured alongside, warm: ArgumentParser's
        /// debug-only checks and loading 20 libraries over 9p take seconds under emulation, a
        /// release build milliseconds). The command's checks, its process scan, the kernel's
        /// request, the driver's release and the unbind all count.
        @Test func unbindWhileTheDriverRunsReleasesTheDevice() throws {
            let address = try pluggedAndBound()
            let mark = try TestBench.shell("dmesg").output.count
            let load = try startLoad(address)
            // The dry run first: the binary's pages come over 9p on a first run, so the start
            // measured next, like the unbind after it, is the warm one.
            let dryRunStart = monotonicNanoseconds()
            let dryRun = try TestBench.modeless("unbind", address.description, "--release", "--dry-run")
            let dryRunTime = monotonicNanoseconds() - dryRunStart
            #expect(dryRun.status == 0, "\(dryRun.output)")
            // The start alone: the same command, refused at once for an address with no device.
            let startupStart = monotonicNanoseconds()
            let startup = try TestBench.modeless("unbind", "ffff:ff:1f.7", "--release", "--dry-run")
            let baseline = monotonicNanoseconds() - startupStart
            #expect(startup.status == 66, "\(startup.output)")
            let start = monotonicNanoseconds()
            let unbind = try TestBench.modeless("unbind", address.description, "--release")
            let unbound = monotonicNanoseconds() - start
            #expect(unbind.status == 0, "\(unbind.output)")
            let (status, output, elapsed) = finish(load, since: start)
            let log = try kernelLogSince(mark)
            print("unbind --release: the driver exited \(elapsed / 1_000_000) ms after the command started, which returned after \(unbound / 1_000_000) ms; the debug build's start: \(baseline / 1_000_000) ms; the dry run: \(dryRunTime / 1_000_000) ms\n\(output)\n\(log.split(separator: "\n").filter { $0.contains("\(address)") }.joined(separator: "\n"))")
            #expect(status == 0, "\(output)")
            #expect(output.contains("device removed"), "\(output)")
            #expect(elapsed < baseline + Self.exitBound,
                    "the driver exited \(elapsed / 1_000_000) ms after unbind started; the debug build's start took \(baseline / 1_000_000) ms")
            // vfio-pci relayed the request (it logs #0, #10, …; a second one, 10 s later, would
            // have broken the bound above).
            #expect(log.contains("Relaying device request to user (#0)"), "\(log)")
            #expect(TestBench.driver(of: address) != UserModeDriver.vfioPCI.rawValue)
            #expect(!log.contains("blocked until released"))
            _ = try PCIBinder().bind(.address(address), to: .vfioPCI)
        }

        /// UIO has no request channel: another tool's unbind from uio_pci_generic goes through at
        /// once, and the driver learns of it from the kernel's uevent, stops and exits 0.
        @Test func anUnbindFromUIOIsSeenThroughTheKernelsEvent() throws {
            let nic = try TestBench.e1000(1)
            let binder = PCIBinder()
            _ = try binder.bind(.address(nic), to: .uioPCIGeneric)
            defer { _ = try? binder.unbind(.address(nic)) }
            let driver = try ChildProcess(try ProgramRunner.builtProgram("modeless"),
                                          ["run", "e1000", nic.description, "--ip", "10.9.0.2", "--seconds", "300",
                                           "--allow-unisolated-dma"])
            let first = driver.readLine(timeout: 120) ?? ""
            try #require(first.hasPrefix("e1000 on uio"), "the driver did not start: \(first)")
            usleep(500_000)
            let start = monotonicNanoseconds()
            let unbind = try TestBench.shell("echo \(nic) > /sys/bus/pci/drivers/uio_pci_generic/unbind")
            #expect(unbind.status == 0, "\(unbind.output)")
            let (status, output, elapsed) = finish(driver, since: start)
            print("UIO unbind to exit: \(elapsed / 1_000_000) ms\n\(output)")
            #expect(status == 0, "\(output)")
            #expect(output.contains("device removed"), "\(output)")
            #expect(output.contains("UIO has no request channel"), "\(output)")
            #expect(elapsed < Self.exitBound)
        }

        /// A plain unbind still refuses while the driver holds the device, changing nothing.
        @Test func unbindWithoutReleaseIsStillRefused() throws {
            let address = try pluggedAndBound()
            let load = try startLoad(address)
            defer {
                load.signal(SIGTERM)
                _ = try? load.wait()
            }
            let unbind = try TestBench.modeless("unbind", address.description)
            #expect(unbind.status == 80, "\(unbind.output)")
            #expect(unbind.output.contains("--release") || unbind.output.contains("held by a process"), "\(unbind.output)")
            #expect(TestBench.driver(of: address) == UserModeDriver.vfioPCI.rawValue)
        }

        /// A supervised `serve nvme` ends when its controller is unplugged, waits while it is
        /// gone, and serves again once it is plugged back in: the supervisor's device check binds
        /// the returning controller by its persistent override (`bind --persist`), with no
        /// manual bind.
        @Test func aSupervisedServiceWaitsForItsDeviceAndResumes() throws {
            let address = try pluggedAndBound()
            var template = Array("/tmp/mlr-XXXXXX".utf8CString)
            let root = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
            let containers = ContainerDirectory(path: root + "/c")
            let configuration = SupervisorConfiguration(
                service: "hot", command: [try ProgramRunner.builtProgram("modeless"), "serve", "nvme", address.description, "--device", "disk"],
                stateDirectory: root + "/state", environment: ["MODELESS_CONTAINER_DIR": containers.path])
            let supervisor = try Supervisor(configuration, containers: containers)
            // As `modeless bind --persist` records it, in this test's own configuration directory.
            let overrides = OverrideStore(configDirectory: root + "/config")
            try overrides.set(.init(driver: .vfioPCI), for: address)
            let presence = DevicePresence(address, rebinding: .init(overrides: overrides) { print("[presence] \($0)") })
            defer { presence.stop() }
            supervisor.deviceAvailability = { presence.unavailability() }
            supervisor.onOutput = { print("[\($0)] \($1)") }
            supervisor.onEvent = { print("[\($0.instance)] \($0.message)") }
            try supervisor.start()
            defer { supervisor.stop() }
            try #require(supervisor.waitUntilServing(seconds: 120))

            let start = monotonicNanoseconds()
            let reply = try HotplugBench.unplug()
            #expect(reply.contains("\"return\""), "device_del: \(reply)")
            #expect(HotplugBench.wait(30) { supervisor.instances[0].phase == .waitingForDevice })
            print("device_del to waiting-for-device: \((monotonicNanoseconds() - start) / 1_000_000) ms")
            #expect(supervisor.instances[0].lastCause == "exited with status 0")
            usleep(2_000_000)
            #expect(supervisor.instances[0].phase == .waitingForDevice, "not restarted while the device is gone")

            // Back, with no bind: the kernel gives it no driver (or its own), the supervisor's check applies the override.
            let replug = try HotplugBench.plug()
            try #require(replug.contains("\"return\""), "device_add: \(replug)")
            let plugged = monotonicNanoseconds()
            #expect(HotplugBench.wait(120) { supervisor.instances[0].phase == .serving })
            print("device_add to serving: \((monotonicNanoseconds() - plugged) / 1_000_000) ms")
            #expect(TestBench.driver(of: address) == UserModeDriver.vfioPCI.rawValue)
            #expect(supervisor.instances[0].restarts == 1)
            let consumer = try LogicalContainer(name: "reader", directory: containers, serving: false)
            let handle = try consumer.open("hot-0/disk")
            try consumer.close(handle)
        }
    }
}
