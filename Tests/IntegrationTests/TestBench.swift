import Glibc
import FoundationEssentials
import ModelessBus
import ModelessSystem
import Testing

/// Every suite that touches the bench's devices, one at a time: they bind and unbind the
/// same functions.
@Suite("VM", .serialized, .enabled(if: TestBench.isGuest, "runs in the VM: scripts/vm/run"))
struct VM {}

/// The guest of `scripts/vm/run`: real vfio-pci and uio_pci_generic on QEMU's edu, two
/// e1000 NICs and an NVMe controller.
///
/// These tests bind and unbind devices, so they run only there: `MODELESS_VM=1` must be set
/// and QEMU's edu device (1234:11e8) present. On any other machine they are disabled, so that
/// no test ever rebinds a real machine's disk or network.
enum TestBench {
    static let isGuest: Bool = {
        guard getenv("MODELESS_VM").map({ String(cString: $0) }) == "1" else { return false }
        return (try? PCIBus().devices().contains { $0.vendorID == 0x1234 && $0.deviceID == 0x11e8 }) ?? false
    }()

    static let bus = PCIBus()

    static func address(vendor: UInt16, device: UInt16, index: Int = 0) throws -> PCIAddress {
        let matches = try bus.devices().filter { $0.vendorID == vendor && $0.deviceID == device }
        return try #require(matches.dropFirst(index).first, "no \(hex(vendor)):\(hex(device)) #\(index) in the guest").address
    }

    static func edu() throws -> PCIAddress { try address(vendor: 0x1234, device: 0x11e8) }
    static func e1000(_ index: Int) throws -> PCIAddress { try address(vendor: 0x8086, device: 0x100e, index: index) }
    static func nvme() throws -> PCIAddress { try address(vendor: 0x1b36, device: 0x0010) }

    /// The sysfs state a bind may change, for every device: driver and driver_override.
    static func bindings() throws -> [String: String] {
        var result: [String: String] = [:]
        for device in try bus.devices() {
            result[device.address.description] = "\(device.driver ?? "-") override=\(device.driverOverride ?? "-")"
        }
        return result
    }

    static func driver(of address: PCIAddress) -> String? {
        FileAccess.linkTargetName("/sys/bus/pci/devices/\(address)/driver")
    }

    /// The `modeless` binary next to this test bundle.
    static func modeless(_ arguments: String...) throws -> ProgramResult {
        try ProgramRunner.run(try ProgramRunner.builtProgram("modeless"), arguments)
    }

    static func shell(_ script: String) throws -> ProgramResult {
        try ProgramRunner.run("sh", ["-c", script])
    }

    static func hex(_ value: UInt16) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 4 - digits.count) + digits
    }
}
