import Glibc
import ModelessBus
import ModelessSystem
import Testing

extension VM {
    /// `modeless bind` on the real kernel refuses what it should not take: platform
    /// infrastructure, a namespace holding a file system, a device a process holds. Each
    /// refusal has its exit code, names what it found, and changes no binding.
    @Suite("bind knows what it binds")
    struct BindSafetyIntegrationTests {
        /// Runs `modeless ARGS`, expects `status` and `text` in the output and no binding
        /// changed.
        func expectRefused(_ arguments: [String], status: Int32, mentioning texts: [String]) throws {
            let before = try TestBench.bindings()
            let result = try ProgramRunner.run(try ProgramRunner.builtProgram("modeless"), arguments)
            #expect(result.status == status, "\(arguments): \(result.output)")
            for text in texts { #expect(result.output.contains(text), "\(arguments): \(result.output)") }
            #expect(try TestBench.bindings() == before, "\(arguments) changed a binding")
        }

        /// The binder's own refusals of a held device, bind and unbind, each within 1 s. (The
        /// command line's are checked by `expectRefused`; under the bench's software emulation
        /// starting a debug `modeless` alone takes 1-3 s.)
        func expectQuickRefusals(_ address: PCIAddress, to driver: UserModeDriver, holder: String) throws {
            let binder = PCIBinder()
            for (name, action) in [("bind", { () throws(BusError) in _ = try binder.bind(.address(address), to: driver) }),
                                   ("unbind", { () throws(BusError) in _ = try binder.unbind(.address(address)) })] {
                let start = monotonicNanoseconds()
                let error = #expect(throws: BusError.self) { try action() }
                let seconds = Double(monotonicNanoseconds() - start) / 1e9
                print("\(name) of \(address) while held: refused in \(seconds) s")
                #expect(error?.kind == .heldByProcess && error?.message.contains(holder) == true, "\(error?.description ?? "")")
                #expect(seconds < 1, "\(name) took \(seconds) s to refuse")
            }
        }

        @Test func theHostBridgeIsRefusedNamingItsClass() throws {
            try expectRefused(["bind", "0000:00:00.0"], status: 78,
                              mentioning: ["0000:00:00.0 is a host bridge (class 0x0600)", "--force"])
            try expectRefused(["bind", "00:00.0", "--to", "uio_pci_generic", "--dry-run"], status: 78,
                              mentioning: ["host bridge"])
        }

        /// The namespace formatted with ext4 through the kernel's nvme driver: bind refuses
        /// naming the file system and its UUID, and the kernel keeps the controller; --force takes it.
        @Test func anExt4NamespaceIsRefusedUnlessForced() throws {
            let nvme = try TestBench.nvme()
            var namespace = try KernelNVMe.namespace(of: nvme)
            let name = String(namespace.split(separator: "/").last!)
            let made = try TestBench.shell("mkfs.ext4 -q -F \(namespace)")
            #expect(made.status == 0, "\(made.output)")
            defer {
                if let wiped = try? KernelNVMe.namespace(of: nvme) { _ = try? TestBench.shell("wipefs -q -a \(wiped)") }
            }
            let uuid = try TestBench.shell("blkid -p -o value -s UUID \(namespace)").output.trimmingBlanks()
            #expect(uuid.count == 36)

            try expectRefused(["bind", nvme.description], status: 79,
                              mentioning: ["\(name) holds an ext4 filesystem (UUID \(uuid))", "--force"])
            #expect(TestBench.driver(of: nvme) == "nvme")

            let forced = try TestBench.modeless("bind", nvme.description, "--force")
            #expect(forced.status == 0, "\(forced.output)")
            #expect(TestBench.driver(of: nvme) == "vfio-pci")
            let back = try TestBench.modeless("unbind", nvme.description)
            #expect(back.status == 0, "\(back.output)")
            namespace = try KernelNVMe.namespace(of: nvme)
            #expect(try TestBench.shell("blkid -p -o value -s UUID \(namespace)").output.trimmingBlanks() == uuid,
                    "the file system survived the round trip")
        }

        /// `modeless serve nvme` holds the controller through VFIO: moving it to
        /// uio_pci_generic, or giving it back, is refused at once naming the process, where
        /// the kernel's unbind would have waited for it without end.
        @Test func aProcessHoldingTheDeviceThroughVFIOIsNamedAtOnce() throws {
            let nvme = try TestBench.nvme()
            let binder = PCIBinder()
            _ = try binder.bind(.address(nvme), to: .vfioPCI, force: true)
            defer { _ = try? binder.unbind(.address(nvme)) }
            var template = Array("/tmp/mlh-XXXXXX".utf8CString)
            let directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
            let server = try ChildProcess(try ProgramRunner.builtProgram("modeless"),
                                          ["serve", "nvme", nvme.description, "--container", "held"],
                                          environment: ["MODELESS_CONTAINER_DIR": directory])
            defer {
                server.signal(SIGTERM)
                _ = try? server.wait()
            }
            let line = server.readLine(timeout: 60) ?? ""
            try #require(line.hasPrefix("serving held/"), "\(line)")

            let holder = "pid \(server.processID) (modeless) has /dev/vfio/"
            try expectQuickRefusals(nvme, to: .uioPCIGeneric, holder: holder)
            try expectRefused(["bind", nvme.description, "--to", "uio_pci_generic"], status: 80,
                              mentioning: [holder, "kill \(server.processID)"])
            try expectRefused(["unbind", nvme.description], status: 80, mentioning: [holder])
            #expect(TestBench.driver(of: nvme) == "vfio-pci")
        }

        /// A shell that opened edu's /dev/uioN and went to sleep holds it the same way.
        @Test func aProcessHoldingTheUIONodeIsNamed() throws {
            let edu = try TestBench.edu()
            let binder = PCIBinder()
            let report = try binder.bind(.address(edu), to: .uioPCIGeneric)
            defer { _ = try? binder.unbind(.address(edu)) }
            let node = try #require(report.node)
            let sleeper = try ChildProcess("sh", ["-c", "exec 3<>\(node); echo opened; exec sleep 60"])
            defer {
                sleeper.signal(SIGKILL)
                _ = try? sleeper.wait()
            }
            try #require(sleeper.readLine(timeout: 30) == "opened")
            for _ in 0..<100 where FileAccess.readTextIfPresent("/proc/\(sleeper.processID)/comm") != "sleep" { usleep(50_000) }
            let holder = "pid \(sleeper.processID) (sleep) has \(node) open"
            try expectQuickRefusals(edu, to: .vfioPCI, holder: holder)
            try expectRefused(["bind", edu.description, "--to", "vfio-pci"], status: 80, mentioning: [holder])
            try expectRefused(["unbind", edu.description], status: 80, mentioning: [holder])
        }
    }
}
