import FoundationEssentials
import ModelessSystem
import Testing

/// The match tables on the command line, against this machine's own PCI functions (none of
/// which a sample driver takes): refusals come before any device is opened.
@Suite("Command line: driver match tables")
struct DriverMatchCommandTests {
    struct ListedDevice: Decodable {
        var address: String
        var vendorId: String
        var deviceId: String
        var matchingDriver: String?
    }

    struct ListedDriver: Decodable {
        struct Entry: Decodable {
            var vendorId: String?
            var deviceId: String?
            var classCode: String?
            var classMask: String?
        }
        var name: String
        var matches: [Entry]
    }

    /// A function of this machine that no sample driver takes.
    func foreignDevice() throws -> ListedDevice? {
        let listed = try modeless("list", "--json")
        #expect(listed.status == 0)
        return try JSONDecoder().decode([ListedDevice].self, from: Data(listed.output.utf8)).first { $0.matchingDriver == nil }
    }

    @Test(arguments: ["edu", "e1000", "nvme"])
    func aDriverOfferedAnotherDeviceIsRefused(_ driver: String) throws {
        guard let device = try foreignDevice() else { return }  // a machine with no PCI functions
        let required = driver == "e1000" ? ["--ip", "169.254.7.1"] : []
        let result = try ProgramRunner.run(try modelessPath(), ["run", driver, device.address] + required)
        #expect(result.status == 68, "\(result.output)")
        #expect(result.output.contains("the \(driver) driver does not support"), "\(result.output)")
        #expect(result.output.contains("\(device.vendorId):\(device.deviceId)"), "names the device's ids: \(result.output)")
        let supported = ["edu": "1234:11e8", "e1000": "8086:100e", "nvme": "class 010802"][driver]!
        #expect(result.output.contains("it supports \(supported)"), "\(result.output)")
    }

    @Test func runWithoutADriverRefusesADeviceNoTableTakes() throws {
        guard let device = try foreignDevice() else { return }
        let result = try ProgramRunner.run(try modelessPath(), ["run", device.address])
        #expect(result.status == 68, "\(result.output)")
        #expect(result.output.contains("no sample driver supports \(device.address)"), "\(result.output)")
    }

    @Test func runOfAMissingDeviceKeepsItsCode() throws {
        let named = try ProgramRunner.run(try modelessPath(), ["run", "edu", "0000:ff:1f.7"])
        #expect(named.status == 66, "\(named.output)")
        let unnamed = try ProgramRunner.run(try modelessPath(), ["run", "0000:ff:1f.7"])
        #expect(unnamed.status == 66, "\(unnamed.output)")
    }

    @Test func theModelNeedsNoDevice() throws {
        let result = try ProgramRunner.run(try modelessPath(), ["run", "edu", "--model"])
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains("identical"))
    }

    @Test func driversListsEveryTable() throws {
        let text = try modeless("drivers")
        #expect(text.status == 0)
        for line in ["edu", "1234:11e8", "e1000", "8086:100e", "nvme", "class 010802", "1b36:0010"] {
            #expect(text.output.contains(line), "\(text.output)")
        }
        let json = try modeless("drivers", "--json")
        let drivers = try JSONDecoder().decode([ListedDriver].self, from: Data(json.output.utf8))
        #expect(drivers.map(\.name) == ["edu", "e1000", "nvme"])
        #expect(drivers[2].matches.first?.classCode == "010802" && drivers[2].matches.first?.classMask == "ffffff")
        #expect(drivers[0].matches.first?.vendorId == "1234" && drivers[0].matches.first?.deviceId == "11e8")
    }

    @Test func helpListsTheUnsupportedDeviceCode() throws {
        #expect(try modeless("--help").output.contains("68 driver does not support the device"))
    }
}
