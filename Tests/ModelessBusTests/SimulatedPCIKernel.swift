import Glibc
import ModelessBus
import ModelessSystem
import Synchronization

/// A stand-in for the kernel's PCI core: a sysfs tree in a temporary directory whose writes
/// to `driver_override`, `bind`, `unbind` and `drivers_probe` behave as Linux's do, and a
/// `modprobe` that registers drivers. Failures can be injected per attribute. Beside it, a
/// `/proc` with processes and their open files, and a `/dev` whose block devices are files.
final class SimulatedPCIKernel: PCIKernelControl, @unchecked Sendable {
    struct Device {
        var address: String
        var vendor: UInt16
        var device: UInt16
        var classCode: UInt32 = 0x00FF00
        var driver: String? = nil
        var iommuGroup: Int? = nil
        var interface: (name: String, up: Bool)? = nil
        var mountedBlock: (name: String, mountPoint: String?)? = nil
    }

    let root: String
    var sysfs: String { "\(root)/sys" }
    var proc: String { "\(root)/proc" }
    var state: String { "\(root)/state" }
    var dev: String { "\(root)/dev" }

    /// Which devices each driver claims through its id table (driver_override aside).
    let idTables: [String: Set<UInt32>]
    /// Modules `modprobe` can load, by module name, with the driver each registers.
    var loadableModules: [String: String]
    /// Attribute path suffixes whose next writes fail with the given errno.
    private let failures = Mutex<[String: Errno]>([:])
    private let log = Mutex<[String]>([])
    var writable = true

    var bus: PCIBus { PCIBus(sysfsRoot: sysfs, procRoot: proc, devRoot: dev) }
    var binder: PCIBinder { PCIBinder(bus: bus, kernel: self, store: BindingStore(directory: state)) }
    var writes: [String] { log.withLock { $0 } }

    init(devices: [Device], registeredDrivers: [String], idTables: [String: Set<UInt32>] = [:],
         loadableModules: [String: String] = [:], iommu: Bool = true) throws {
        var template = Array("/tmp/modeless-sim-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw SystemError("mkdtemp", "/tmp", errno: .current) }
        root = String(cString: made)
        self.idTables = idTables
        self.loadableModules = loadableModules
        try FileAccess.createDirectories("\(sysfs)/bus/pci/devices")
        try FileAccess.createDirectories("\(sysfs)/kernel/iommu_groups")
        try FileAccess.createDirectories("\(proc)/self")
        try FileAccess.createDirectories(dev)
        try FileAccess.replaceFile("\(sysfs)/bus/pci/drivers_probe", with: [])
        for driver in registeredDrivers { try FileAccess.createDirectories("\(sysfs)/bus/pci/drivers/\(driver)") }
        var mountinfo = "22 1 254:0 / / rw - ext4 /dev/vda rw\n"
        for (index, device) in devices.enumerated() {
            let directory = "\(sysfs)/bus/pci/devices/\(device.address)"
            try FileAccess.createDirectories(directory)
            func put(_ name: String, _ text: String) throws { try FileAccess.replaceFile("\(directory)/\(name)", with: Array(text.utf8)) }
            try put("vendor", "0x\(String(device.vendor, radix: 16))\n")
            try put("device", "0x\(String(device.device, radix: 16))\n")
            try put("subsystem_vendor", "0x1af4\n")
            try put("subsystem_device", "0x1100\n")
            try put("class", "0x\(String(device.classCode, radix: 16))\n")
            try put("revision", "0x10\n")
            try put("driver_override", "(null)\n")
            try put("numa_node", "-1\n")
            try put("resource", "0x00000000fea00000 0x00000000feafffff 0x0000000000040200\n")
            if let driver = device.driver { symlink("../../drivers/\(driver)", "\(directory)/driver") }
            if iommu, let group = device.iommuGroup {
                try FileAccess.createDirectories("\(sysfs)/kernel/iommu_groups/\(group)/devices")
                try FileAccess.replaceFile("\(sysfs)/kernel/iommu_groups/\(group)/devices/\(device.address)", with: [])
                symlink("../../../kernel/iommu_groups/\(group)", "\(directory)/iommu_group")
            }
            if let interface = device.interface {
                let netDirectory = "\(directory)/net/\(interface.name)"
                try FileAccess.createDirectories(netDirectory)
                symlink("../../../../class/net", "\(netDirectory)/subsystem")
                try FileAccess.replaceFile("\(netDirectory)/flags", with: Array((interface.up ? "0x1003\n" : "0x1002\n").utf8))
            }
            if let block = device.mountedBlock {
                let blockDirectory = "\(directory)/nvme/nvme\(index)/\(block.name)"
                try FileAccess.createDirectories(blockDirectory)
                symlink("../../../../../block", "\(blockDirectory)/subsystem")
                try FileAccess.replaceFile("\(blockDirectory)/dev", with: Array("259:\(index)\n".utf8))
                if let mountPoint = block.mountPoint { mountinfo += "40 22 259:\(index) / \(mountPoint) rw - ext4 /dev/\(block.name) rw\n" }
            }
        }
        try FileAccess.replaceFile("\(proc)/self/mountinfo", with: Array(mountinfo.utf8))
        try FileAccess.replaceFile("\(proc)/swaps", with: Array("Filename Type Size Used Priority\n".utf8))
    }

    deinit {
        _ = try? ProgramRunner.run("rm", ["-rf", root])
    }

    /// Adds a process `pid` named `command` with `nodes` open (links in `proc/PID/fd`, as the
    /// kernel shows them: `/dev/vfio/3`).
    func addProcess(_ pid: Int32, command: String, holding nodes: [String]) throws {
        try FileAccess.createDirectories("\(proc)/\(pid)/fd")
        try FileAccess.replaceFile("\(proc)/\(pid)/comm", with: Array("\(command)\n".utf8))
        symlink("/dev/null", "\(proc)/\(pid)/fd/0")
        for (index, node) in nodes.enumerated() { symlink(node, "\(proc)/\(pid)/fd/\(index + 3)") }
    }

    /// Makes the next write to a path ending in `suffix` fail with `errno`.
    func failWrites(endingIn suffix: String, with errno: Errno) {
        failures.withLock { $0[suffix] = errno }
    }

    /// Every device's driver and override: compared before and after to prove nothing changed.
    func snapshot() -> [String: String] {
        var result: [String: String] = [:]
        for address in (try? FileAccess.listDirectory("\(sysfs)/bus/pci/devices")) ?? [] {
            let directory = "\(sysfs)/bus/pci/devices/\(address)"
            result[address] = (FileAccess.linkTargetName("\(directory)/driver") ?? "-") + " override="
                + (FileAccess.readTextIfPresent("\(directory)/driver_override") ?? "?")
        }
        result["store"] = FileAccess.readTextIfPresent("\(state)/bindings.json") ?? "{}"
        return result
    }

    // MARK: PCIKernelControl

    func isWritable(_ path: String) -> Bool { writable }

    func loadModule(_ name: String) -> ProgramResult {
        guard let driver = loadableModules[name] else {
            return ProgramResult(status: 1, output: "modprobe: FATAL: Module \(name) not found in directory /lib/modules/6.1.0")
        }
        try? FileAccess.createDirectories("\(sysfs)/bus/pci/drivers/\(driver)")
        return ProgramResult(status: 0, output: "")
    }

    func write(_ text: String, to path: String) throws(SystemError) {
        log.withLock { $0.append("\(path) <- \(text.trimmingBlanks())") }
        if let errno = failures.withLock({ failures in failures.first { path.hasSuffix($0.key) }.map { failures.removeValue(forKey: $0.key)! } }) {
            throw SystemError("write", path, errno: errno)
        }
        let value = text.trimmingBlanks()
        let devices = "\(sysfs)/bus/pci/devices"
        if path.hasSuffix("/driver_override") {
            try FileAccess.replaceFile(path, with: Array((value.isEmpty ? "(null)\n" : value + "\n").utf8))
        } else if path.hasSuffix("/unbind") {
            let driver = path.split(separator: "/").dropLast().last.map(String.init)
            guard FileAccess.linkTargetName("\(devices)/\(value)/driver") == driver else {
                throw SystemError("write", path, errno: Errno(rawValue: ENODEV))
            }
            unlink("\(devices)/\(value)/driver")
            if driver == "uio_pci_generic" { _ = try? ProgramRunner.run("rm", ["-rf", "\(devices)/\(value)/uio"]) }
        } else if path.hasSuffix("/bind") {
            let driver = String(path.split(separator: "/").dropLast().last!)
            guard FileAccess.isDirectory("\(sysfs)/bus/pci/drivers/\(driver)") else {
                throw SystemError("open", path, errno: .noSuchFileOrDirectory)
            }
            try attach(value, to: driver)
        } else if path.hasSuffix("/drivers_probe") {
            guard FileAccess.linkTargetName("\(devices)/\(value)/driver") == nil else { return }
            let registered = (try? FileAccess.listDirectory("\(sysfs)/bus/pci/drivers")) ?? []
            for driver in registered where matches(value, driver) {
                try attach(value, to: driver)
                return
            }
        } else {
            throw SystemError("open", path, errno: .noSuchFileOrDirectory)
        }
    }

    private func attach(_ address: String, to driver: String) throws(SystemError) {
        let directory = "\(sysfs)/bus/pci/devices/\(address)"
        guard FileAccess.linkTargetName("\(directory)/driver") == nil else {
            throw SystemError("write", "\(driver)/bind", errno: .resourceBusy)
        }
        guard matches(address, driver) else {
            throw SystemError("write", "\(driver)/bind", errno: Errno(rawValue: ENODEV))
        }
        symlink("../../drivers/\(driver)", "\(directory)/driver")
        if driver == "uio_pci_generic" { try FileAccess.createDirectories("\(directory)/uio/uio0") }
    }

    /// The kernel's rule: with driver_override set, only that driver matches; else the id tables.
    private func matches(_ address: String, _ driver: String) -> Bool {
        let directory = "\(sysfs)/bus/pci/devices/\(address)"
        let override = FileAccess.readTextIfPresent("\(directory)/driver_override") ?? "(null)"
        if override != "(null)" { return override == driver }
        let vendor = FileAccess.readTextIfPresent("\(directory)/vendor").flatMap { UInt32($0.dropFirst(2), radix: 16) } ?? 0
        let device = FileAccess.readTextIfPresent("\(directory)/device").flatMap { UInt32($0.dropFirst(2), radix: 16) } ?? 0
        return idTables[driver]?.contains(vendor << 16 | device) ?? false
    }
}
