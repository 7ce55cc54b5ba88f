import Glibc
import ModelessBus
import ModelessSystem
import Testing

/// Bad requests on a real kernel: each gets its documented exit code and a message naming
/// what was wrong, and no device's driver or override changes.
extension VM {
@Suite("refused requests change nothing")
struct RefusalIntegrationTests {
    func expectRefused(_ arguments: [String], status: Int32, mentioning text: String,
                       asUser user: Int? = nil) throws {
        let before = try TestBench.bindings()
        let modeless = try ProgramRunner.builtProgram("modeless")
        let result: ProgramResult
        if let user {
            result = try ProgramRunner.run("setpriv", ["--reuid=\(user)", "--regid=\(user)", "--clear-groups",
                                                      modeless] + arguments)
        } else {
            result = try ProgramRunner.run(modeless, arguments)
        }
        #expect(result.status == status, "\(arguments): \(result.output)")
        #expect(result.output.contains(text), "\(arguments): \(result.output)")
        #expect(try TestBench.bindings() == before, "\(arguments) changed a binding")
    }

    @Test func malformedAndMissingDevices() throws {
        try expectRefused(["bind", "0000:00:1f"], status: 64, mentioning: "'0000:00:1f' is not a PCI address")
        try expectRefused(["bind", "00:03.0", "--to", "nvme"], status: 64, mentioning: "nvme")
        try expectRefused(["bind", "0000:00:1f.7"], status: 66, mentioning: "no PCI device at 0000:00:1f.7")
        try expectRefused(["unbind", "abcd:ef01"], status: 66, mentioning: "no PCI device has id abcd:ef01")
        try expectRefused(["bind", "8086:100e"], status: 65, mentioning: "2 PCI devices have id 8086:100e")
    }

    @Test func unbindingADeviceNeverBound() throws {
        try expectRefused(["unbind", try TestBench.edu().description], status: 67,
                          mentioning: "is not bound to a user-mode driver")
    }

    @Test func notPermittedForAnOrdinaryUser() throws {
        try expectRefused(["bind", try TestBench.edu().description], status: 77,
                          mentioning: "writable by root only", asUser: 65534)
        try expectRefused(["bind", try TestBench.edu().description, "--to", "uio_pci_generic"], status: 77,
                          mentioning: "not permitted", asUser: 65534)
    }

    @Test func anInterfaceThatIsUpIsInUse() throws {
        #expect(try TestBench.shell("modprobe e1000").status == 0)
        let nic = try TestBench.e1000(1)
        for _ in 0..<100 where TestBench.driver(of: nic) != "e1000" { usleep(50_000) }
        let interface = try #require(TestBench.bus.device(at: nic).kernelUses.compactMap { use -> String? in
            if case .networkInterface(let name, _) = use { return name } else { return nil }
        }.first)
        #expect(try TestBench.shell("ip link set \(interface) up").status == 0)
        defer { _ = try? TestBench.shell("ip link set \(interface) down") }
        try expectRefused(["bind", nic.description], status: 75, mentioning: "network interface \(interface) (up)")
        try expectRefused(["bind", nic.description, "--to", "uio_pci_generic"], status: 75, mentioning: "--force")
    }

    /// q35 puts its LPC bridge, SATA and SMBus functions (00:1f.x) in one IOMMU group: with
    /// the SMBus function on i801_smbus, the SATA function cannot go to vfio-pci.
    @Test func aGroupWithAMemberOnAHostDriverIsNotViable() throws {
        #expect(try TestBench.shell("modprobe i2c-i801").status == 0)
        let smbus = try #require(PCIAddress("0000:00:1f.3"))
        for _ in 0..<100 where TestBench.driver(of: smbus) == nil { usleep(50_000) }
        let driver = try #require(TestBench.driver(of: smbus))
        try expectRefused(["bind", "0000:00:1f.2"], status: 71, mentioning: "0000:00:1f.3 (\(driver)) still on host drivers")
    }

    /// A module that cannot be loaded: `modprobe` is made to fail as it does when the module
    /// is not installed.
    @Test func aModuleThatCannotBeLoaded() throws {
        let edu = try TestBench.edu()
        #expect(try TestBench.shell("rmmod uio_pci_generic").status == 0)
        defer { _ = try? TestBench.shell("modprobe uio_pci_generic") }
        let modeless = try ProgramRunner.builtProgram("modeless")
        let before = try TestBench.bindings()
        let result = try TestBench.shell("""
            mkdir -p /tmp/nomodules && printf '#!/bin/sh\\necho "modprobe: FATAL: Module $1 not found" >&2\\nexit 1\\n' > /tmp/nomodules/modprobe
            chmod +x /tmp/nomodules/modprobe
            PATH=/tmp/nomodules:$PATH \(modeless) bind \(edu) --to uio_pci_generic
            """)
        #expect(result.status == 69, "\(result.output)")
        #expect(result.output.contains("kernel module uio_pci_generic is not available"), "\(result.output)")
        #expect(try TestBench.bindings() == before)
    }

    @Test func dryRunChangesNothing() throws {
        let edu = try TestBench.edu()
        let before = try TestBench.bindings()
        let result = try TestBench.modeless("bind", edu.description, "--dry-run")
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains("would do:") && result.output.contains("bind \(edu) to vfio-pci"), "\(result.output)")
        #expect(try TestBench.bindings() == before)
    }
}
}
