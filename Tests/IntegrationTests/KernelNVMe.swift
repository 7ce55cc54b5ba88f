import Glibc
import ModelessBus
import ModelessSystem
import Testing

/// The bench's NVMe controller under the kernel's own nvme driver: what the media-safety
/// tests use to look at the namespace from outside Modeless.
enum KernelNVMe {
    /// Loads the kernel's nvme driver, makes sure it has the controller, and returns its
    /// namespace 1 block device (`/dev/nvme0n1`) once the node exists.
    static func namespace(of address: PCIAddress) throws -> String {
        #expect(try TestBench.shell("modprobe nvme").status == 0)
        let directory = "/sys/bus/pci/devices/\(address)"
        if TestBench.driver(of: address) == nil {
            _ = try TestBench.shell("echo \(address) > /sys/bus/pci/drivers_probe")
        }
        for _ in 0..<300 {
            // Namespace 1 itself, by its NSID: the kernel scans namespaces asynchronously and
            // numbers its disks in the order it finds them, so nvme0n1 may be namespace 2.
            if TestBench.driver(of: address) == "nvme",
               let name = blockDevices(under: directory).first(where: { nsid(of: $0, under: directory) == "1" }),
               FileAccess.exists("/dev/\(name)") {
                return "/dev/\(name)"
            }
            usleep(50_000)
        }
        Issue.record("\(address) did not get a namespace block device under the kernel's nvme driver (driver: \(TestBench.driver(of: address) ?? "none"))")
        throw SystemError("wait for", "/dev/nvme*n1 of \(address)", errno: .noSuchFileOrDirectory)
    }

    /// The NSID of namespace block device `name` (sysfs `nsid`), or nil.
    static func nsid(of name: String, under directory: String) -> String? {
        let controllers = (try? FileAccess.listDirectory("\(directory)/nvme")) ?? []
        for controller in controllers {
            if let text = FileAccess.readTextIfPresent("\(directory)/nvme/\(controller)/\(name)/nsid") {
                return String(text.filter { $0.isNumber })
            }
        }
        return nil
    }

    /// The namespace block devices of the controller: `nvme0n1` from `DIR/nvme/nvme0/nvme0n1`.
    static func blockDevices(under directory: String) -> [String] {
        let controllers = (try? FileAccess.listDirectory("\(directory)/nvme")) ?? []
        return controllers.flatMap { controller in
            ((try? FileAccess.listDirectory("\(directory)/nvme/\(controller)")) ?? [])
                .filter { $0.hasPrefix("\(controller)n") && FileAccess.exists("\(directory)/nvme/\(controller)/\($0)/dev") }
        }.sorted()
    }

    /// SHA-256 of `count` MiB of `device` from MiB `skip` (all of it when `count` is nil), read
    /// with O_DIRECT so that the page cache cannot answer for the media.
    static func sha256(_ device: String, skipMiB skip: Int = 0, countMiB count: Int? = nil) throws -> String {
        let range = "skip=\(skip)" + (count.map { " count=\($0)" } ?? "")
        let result = try TestBench.shell("dd if=\(device) bs=1M \(range) iflag=direct status=none | sha256sum")
        #expect(result.status == 0, "\(result.output)")
        return String(result.output.prefix { $0 != " " })
    }
}
