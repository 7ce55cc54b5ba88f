import FoundationEssentials
import ModelessSystem
import Testing

/// Runs the `modeless` binary built next to this test bundle.
func modeless(_ arguments: String...) throws -> ProgramResult {
    try ProgramRunner.run(try modelessPath(), arguments)
}

/// Commands here are refused before they could change anything: the host's own PCI
/// functions carry its disk and network, so no test binds them.
@Suite("Command line: errors and exit codes")
struct CommandLineErrorTests {
    @Test(arguments: [
        (["bind", "zz:zz"], 64, "'zz:zz' is not a PCI address"),
        // Interfaces and block devices: an unknown name, and names that are not on PCI.
        (["bind", "zz"], 66, "no network interface or block device is named zz"),
        (["unbind", "/dev/nvme9n9"], 66, "no network interface or block device is named nvme9n9"),
        (["bind", "lo"], 66, "network interface lo is not on a PCI device"),
        (["bind", "0000:ff:1f.7", "eth9", "--dry-run"], 66, "no PCI device at 0000:ff:1f.7"),
        (["bind"], 64, "name at least one device, or a class with --class"),
        (["bind", "--class", "gpu"], 64, "gpu"),
        (["list", "--class", "sound"], 64, "sound"),
        (["overrides", "remove", "0000:ff:1f.7", "--config-dir", "/nonexistent"], 82, "0000:ff:1f.7 has no persistent override"),
        (["overrides", "apply", "0000:ff:1f.7", "--config-dir", "/nonexistent"], 82, "0000:ff:1f.7 has no persistent override"),
        (["overrides", "apply", "zz", "--config-dir", "/nonexistent"], 64, "'zz' is not a PCI address"),
        (["bind", "0000:00:1f"], 64, "is not a PCI address"),
        (["unbind", "00:00.9"], 64, "is not a PCI address"),
        (["info", "8086:10e"], 64, "is not a PCI address or vendor:device id"),
        (["bind", "0000:ff:1f.7"], 66, "no PCI device at 0000:ff:1f.7"),
        (["bind", "dead:beef", "--to", "uio_pci_generic"], 66, "no PCI device has id dead:beef"),
        (["unbind", "ff:00.0"], 66, "no PCI device at 0000:ff:00.0"),
        (["info", "0000:fe:00.0"], 66, "no PCI device at 0000:fe:00.0"),
        (["bind", "0000:ff:1f.7", "--to", "e1000"], 64, "e1000"),
        (["serve", "memory-disk", "--spin-microseconds", "200000"], 64, "--spin-microseconds 200000 is outside 0...100000"),
        (["serve", "memory-disk", "--transport", "socket", "--spin-microseconds", "5"], 64, "applies to --transport shared only"),
        (["serve", "memory-disk", "--transport", "pigeon"], 64, "'shared' and 'socket'"),
        // Writes to a device's media need --destructive; refused before the device is looked up.
        (["run", "nvme", "0000:ff:1f.7", "--verify-mib", "8"], 64, "add --destructive"),
        (["run", "nvme", "0000:ff:1f.7", "--verify-mib=-1", "--destructive"], 64, "--verify-mib -1 is negative"),
        (["run", "nvme", "0000:ff:1f.7"], 66, "no PCI device at 0000:ff:1f.7"),
        (["bench", "failover", "--config", "/nonexistent/storage.json"], 64, "add --destructive"),
    ] as [([String], Int32, String)])
    func refused(_ arguments: [String], _ status: Int32, _ message: String) throws {
        let result = try ProgramRunner.run(try modelessPath(), arguments)
        #expect(result.status == status, "\(result.output)")
        #expect(result.output.contains(message), "\(result.output)")
    }

    @Test func helpListsTheExitCodes() throws {
        let result = try modeless("--help")
        #expect(result.status == 0)
        #expect(result.output.contains("77 not permitted"))
    }
}

/// The `modeless` binary in the build directory that holds this test bundle.
func modelessPath() throws -> String { try ProgramRunner.builtProgram("modeless") }

@Suite("Command line: discovery on this machine")
struct DiscoveryTests {
    struct ListedDevice: Decodable {
        var address: String
        var vendorId: String
        var deviceId: String
        var classCode: String
        var revision: String
    }

    /// One device as `lspci -Dnn` prints it:
    /// `0000:00:03.0 Ethernet controller [0200]: Red Hat, Inc. Virtio network device [1af4:1041] (rev 01)`.
    struct LspciLine: Equatable {
        var address: String
        var ids: String
        var classAndSubclass: String
        var revision: String

        init(_ line: Substring) {
            address = String(line.prefix { $0 != " " })
            let brackets = line.split(separator: "[").map { $0.prefix { $0 != "]" } }.dropFirst()
            classAndSubclass = String(brackets.first ?? "")
            ids = String(brackets.last ?? "")
            revision = line.split(separator: "(rev ").dropFirst().first.map { String($0.prefix(2)) } ?? "00"
        }

        init(_ device: ListedDevice) {
            address = device.address
            ids = "\(device.vendorId):\(device.deviceId)"
            classAndSubclass = String(device.classCode.prefix(4))
            revision = device.revision
        }
    }

    @Test func listAgreesWithLspciOnEveryDevice() throws {
        let lspci = try ProgramRunner.run("lspci", ["-Dnn"])
        #expect(lspci.status == 0, "lspci (Debian's pciutils) is needed: \(lspci.output)")
        let expected = lspci.output.split(separator: "\n").map(LspciLine.init)
        let listed = try modeless("list", "--json")
        #expect(listed.status == 0)
        let devices = try JSONDecoder().decode([ListedDevice].self, from: Data(listed.output.utf8))
        #expect(!devices.isEmpty)
        #expect(devices.map(LspciLine.init) == expected)
    }

    @Test func infoDescribesEachDevice() throws {
        let listed = try modeless("list", "--json")
        let devices = try JSONDecoder().decode([ListedDevice].self, from: Data(listed.output.utf8))
        for device in devices {
            let info = try modeless("info", device.address)
            #expect(info.status == 0)
            #expect(info.output.hasPrefix(device.address))
            #expect(info.output.contains("[\(device.vendorId):\(device.deviceId)]"))
        }
    }

    @Test func tableGroupsEveryDevice() throws {
        let table = try modeless("list")
        let listed = try modeless("list", "--json")
        let devices = try JSONDecoder().decode([ListedDevice].self, from: Data(listed.output.utf8))
        #expect(table.status == 0)
        for device in devices { #expect(table.output.contains(device.address)) }
    }
}

@Suite("Command line: bind refuses platform infrastructure")
struct InfrastructureRefusalTests {
    /// Every bridge, system peripheral, memory controller or processor on this machine is
    /// refused with exit code 78 naming its class. `--dry-run`, so that even a regression
    /// could not rebind anything of this machine.
    @Test func everyInfrastructureFunctionIsRefused() throws {
        let listed = try modeless("list", "--json")
        let devices = try JSONDecoder().decode([DiscoveryTests.ListedDevice].self, from: Data(listed.output.utf8))
        let infrastructure = devices.filter { ["05", "06", "08", "0b"].contains($0.classCode.prefix(2)) && !$0.classCode.hasPrefix("0b40") }
        try #require(!infrastructure.isEmpty, "this machine has no bridge or system peripheral to try")
        for device in infrastructure {
            let result = try modeless("bind", device.address, "--dry-run")
            #expect(result.status == 78, "\(device.address): \(result.output)")
            #expect(result.output.contains("\(device.address) is a") && result.output.contains("(class 0x\(device.classCode.prefix(4)))"),
                    "\(result.output)")
        }
    }
}
