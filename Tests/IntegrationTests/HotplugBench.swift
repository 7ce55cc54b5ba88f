import Glibc
import FoundationEssentials
import ModelessBus
import ModelessSystem
import Testing

/// The hot-plug option of the bench (`scripts/vm/run --hotplug`): a second NVMe (QEMU id
/// `nv1`) behind a hot-pluggable root port, and QEMU's monitor reached through the shared out
/// directory: a request written to `qmp-request` is carried out by the host, its reply
/// appears in `qmp-reply`.
enum HotplugBench {
    static let isAvailable: Bool = TestBench.isGuest && getenv("MODELESS_VM_HOTPLUG").map { String(cString: $0) } == "1"

    /// The hot-pluggable NVMe's serial number, and its QEMU id.
    static let serial = "modeless-hotplug"
    static let deviceID = "nv1"

    static var outDirectory: String { getenv("MODELESS_VM_OUT").map { String(cString: $0) } ?? "/tmp/vm-out" }

    /// The hot-pluggable NVMe's address, if it is plugged: the NVMe below a root port (not on bus 0).
    static func plugged() -> PCIAddress? {
        let found = (try? TestBench.bus.devices()) ?? []
        return found.first { $0.vendorID == 0x1b36 && $0.deviceID == 0x0010 && $0.address.bus != 0 }?.address
    }

    /// The hot-pluggable NVMe's address; an issue when it is not plugged.
    static func nvme() throws -> PCIAddress {
        try #require(plugged(), "no NVMe behind the hot-plug root port: run the bench with --hotplug")
    }

    /// Whether a function is at `address`.
    static func isPresent(_ address: PCIAddress) -> Bool {
        FileAccess.isDirectory(TestBench.bus.path(of: address))
    }

    /// Sends `command` (a QMP command as JSON) to QEMU through the host and returns its reply.
    static func qmp(_ command: String) throws -> String {
        let reply = outDirectory + "/qmp-reply"
        _ = unlink(reply)
        try FileAccess.replaceFile(outDirectory + "/qmp-request.tmp", with: Array(command.utf8))
        guard rename(outDirectory + "/qmp-request.tmp", outDirectory + "/qmp-request") == 0 else {
            throw SystemError("rename", "qmp-request", errno: Errno.current)
        }
        let deadline = monotonicNanoseconds() + 20_000_000_000
        while monotonicNanoseconds() < deadline {
            if let text = FileAccess.readTextIfPresent(reply) {
                _ = unlink(reply)
                return text
            }
            usleep(50_000)
        }
        Issue.record("no QMP reply within 20 s: is scripts/vm/run started with --hotplug?")
        return ""
    }

    static func unplug() throws -> String {
        try qmp(#"{"execute": "device_del", "arguments": {"id": "\#(deviceID)"}}"#)
    }

    static func plug() throws -> String {
        try qmp(#"{"execute": "device_add", "arguments": {"driver": "nvme", "id": "\#(deviceID)", "drive": "nvm1", "serial": "\#(serial)", "bus": "rp1"}}"#)
    }

    /// Waits up to `seconds` for `condition`.
    static func wait(_ seconds: Double, _ condition: () -> Bool) -> Bool {
        let deadline = monotonicNanoseconds() + UInt64(seconds * 1e9)
        while !condition() {
            guard monotonicNanoseconds() < deadline else { return false }
            usleep(50_000)
        }
        return true
    }
}
