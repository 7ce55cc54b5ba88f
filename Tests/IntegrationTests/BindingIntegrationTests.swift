import Glibc
import ModelessBus
import ModelessSystem
import Testing

/// Binding on a real kernel, in the test bench guest.
extension VM {
@Suite("binding real devices")
struct BindingIntegrationTests {
    @Test func listShowsTheBenchDevices() throws {
        let devices = try TestBench.bus.devices()
        #expect(devices.filter { $0.ids == "1234:11e8" }.count == 1)
        #expect(devices.filter { $0.ids == "8086:100e" }.count == 2)
        #expect(devices.filter { $0.ids == "1b36:0010" }.count == 1)
        let table = try TestBench.modeless("list")
        #expect(table.status == 0)
        for device in devices where ["1234:11e8", "8086:100e", "1b36:0010"].contains(device.ids) {
            #expect(table.output.contains("\(device.address)"), "\(table.output)")
        }
        let info = try TestBench.modeless("info", "1234:11e8")
        #expect(info.output.contains("BAR0: 1 MiB, memory, 32-bit, non-prefetchable"), "\(info.output)")
        #expect(info.output.contains("MSI (1 vector)"), "\(info.output)")
        #expect(info.output.contains("IOMMU group:  "), "\(info.output)")
    }

    @Test(arguments: [UserModeDriver.vfioPCI, .uioPCIGeneric])
    func eduBindsAndComesBack(_ driver: UserModeDriver) throws {
        let edu = try TestBench.edu()
        let before = try TestBench.bindings()
        let bound = try TestBench.modeless("bind", edu.description, "--to", driver.rawValue)
        #expect(bound.status == 0, "\(bound.output)")
        #expect(TestBench.driver(of: edu) == driver.rawValue)
        let device = try TestBench.bus.device(at: edu)
        let node = try #require(TestBench.bus.userModeNode(of: device))
        #expect(node.hasPrefix(driver == .vfioPCI ? "/dev/vfio/" : "/dev/uio"))
        #expect(FileAccess.exists(node), "\(node) missing")
        #expect(bound.output.contains(node))

        let again = try TestBench.modeless("bind", edu.description, "--to", driver.rawValue)
        #expect(again.status == 0 && again.output.contains("nothing to do"), "\(again.output)")

        let restored = try TestBench.modeless("unbind", edu.description)
        #expect(restored.status == 0, "\(restored.output)")
        #expect(try TestBench.bindings() == before)
        #expect(!FileAccess.exists(node))
    }

    @Test func e1000GoesBackToTheKernelDriver() throws {
        let load = try TestBench.shell("modprobe e1000")
        #expect(load.status == 0, "\(load.output)")
        let nic = try TestBench.e1000(0)
        for _ in 0..<100 where TestBench.driver(of: nic) != "e1000" { usleep(50_000) }
        #expect(TestBench.driver(of: nic) == "e1000")
        let before = try TestBench.bindings()

        let bound = try TestBench.modeless("bind", nic.description)
        #expect(bound.status == 0, "\(bound.output)")
        #expect(TestBench.driver(of: nic) == "vfio-pci")
        #expect(try TestBench.bus.device(at: nic).kernelUses.isEmpty)

        let restored = try TestBench.modeless("unbind", nic.description)
        #expect(restored.status == 0, "\(restored.output)")
        #expect(TestBench.driver(of: nic) == "e1000")
        #expect(try TestBench.bindings() == before)
        let interfaces = try TestBench.bus.device(at: nic).kernelUses
        #expect(interfaces.contains { if case .networkInterface = $0 { true } else { false } }, "\(interfaces)")
    }

    @Test func watchSeesBindAndUnbind() throws {
        let edu = try TestBench.edu()
        let modeless = try ProgramRunner.builtProgram("modeless")
        let script = """
            out=$(mktemp); m=\(modeless)
            $m watch --source kernel --count 2 --timeout 120 > "$out" 2>&1 & watcher=$!
            for i in $(seq 600); do grep -q watching "$out" && break; sleep 0.1; done
            $m bind \(edu) --to uio_pci_generic >/dev/null && $m unbind \(edu) >/dev/null
            wait $watcher; status=$?; cat "$out"; rm -f "$out"; exit $status
            """
        let result = try TestBench.shell(script)
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains("bind \(edu) driver=uio_pci_generic"), "\(result.output)")
        #expect(result.output.contains("unbind \(edu)"), "\(result.output)")
    }
}
}
