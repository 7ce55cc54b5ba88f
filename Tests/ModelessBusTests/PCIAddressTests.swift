import ModelessBus
import Testing

@Suite struct PCIAddressTests {
    @Test(arguments: [
        ("0000:03:00.0", "0000:03:00.0"), ("03:00.0", "0000:03:00.0"), ("0001:ff:1f.7", "0001:ff:1f.7"),
        ("3:0.0", "0000:03:00.0"), ("10000:00:02.0", "10000:00:02.0"), ("0000:AB:1F.7", "0000:ab:1f.7"),
    ])
    func parsesAndFormats(_ text: String, _ canonical: String) {
        #expect(PCIAddress(text)?.description == canonical)
    }

    @Test(arguments: ["", "03:00", "03:00.8", "03:20.0", "0000:100:00.0", "g3:00.0", "03:00.0.1",
                      "0000:03:00:0", "123456789:00:00.0", ":00.0", "03:.0"])
    func rejects(_ text: String) {
        #expect(PCIAddress(text) == nil)
    }

    @Test func sortsByDomainBusDeviceFunction() {
        let addresses = ["0001:00:00.0", "0000:00:1f.7", "0000:01:00.0", "0000:00:02.1"].compactMap(PCIAddress.init)
        #expect(addresses.sorted().map(\.description) == ["0000:00:02.1", "0000:00:1f.7", "0000:01:00.0", "0001:00:00.0"])
    }

    @Test func selectorsAcceptAddressesAndIDs() throws {
        #expect(try DeviceSelector(parsing: "03:00.0") == .address(PCIAddress("0000:03:00.0")!))
        #expect(try DeviceSelector(parsing: "8086:100E") == .ids(vendor: 0x8086, device: 0x100e))
        #expect(throws: BusError.self) { try DeviceSelector(parsing: "8086:10e") }
        #expect(try DeviceSelector(parsing: "eth0") == .kernelName("eth0"))
        #expect(try DeviceSelector(parsing: "/dev/nvme1n1") == .kernelName("nvme1n1"))
        #expect(try DeviceSelector(parsing: "nvme1n1p2") == .kernelName("nvme1n1p2"))
        for bad in ["eth0:1", "a b", "../sda", "/dev/", "x/y", String(repeating: "n", count: 33)] {
            #expect(throws: BusError.self, "\(bad)") { try DeviceSelector(parsing: bad) }
        }
    }
}
