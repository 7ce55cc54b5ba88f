import ModelessSystem

/// Something the running kernel does with a device that a rebind would break.
public enum KernelUse: Sendable, Equatable, Codable, CustomStringConvertible {
    /// A network interface of the device; `isUp` when it is administratively up.
    case networkInterface(name: String, isUp: Bool)
    /// A block device (or partition) of the device, with where it is mounted or what holds it.
    case blockDevice(name: String, mountedAt: [String], heldBy: [String], isSwap: Bool)

    /// Whether this use means the device is busy: an interface that is up, or a block device
    /// that is mounted, used as swap, or held by another device (RAID, device mapper).
    public var isActive: Bool {
        switch self {
        case .networkInterface(_, let isUp): isUp
        case .blockDevice(_, let mounts, let holders, let isSwap): !mounts.isEmpty || !holders.isEmpty || isSwap
        }
    }

    /// The use in words for refusals and `modeless list`, e.g. "network interface eth1 (up)".
    public var description: String {
        switch self {
        case .networkInterface(let name, let isUp):
            "network interface \(name) (\(isUp ? "up" : "down"))"
        case .blockDevice(let name, let mounts, let holders, let isSwap):
            "block device \(name)"
                + (mounts.isEmpty ? "" : " mounted at \(mounts.joined(separator: ", "))")
                + (holders.isEmpty ? "" : " held by \(holders.joined(separator: ", "))")
                + (isSwap ? " used as swap" : "")
        }
    }
}

/// Finds the network interfaces and block devices below a PCI function's sysfs directory.
struct KernelUseScanner {
    /// Mount points by `major:minor` from `/proc/self/mountinfo`.
    let mountsByDevice: [String: [String]]
    /// Block device names in `/proc/swaps`.
    let swapDevices: Set<String>

    init(procRoot: String = "/proc") {
        var mounts: [String: [String]] = [:]
        for line in (FileAccess.readTextIfPresent("\(procRoot)/self/mountinfo") ?? "").split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count > 4 else { continue }
            mounts[String(fields[2]), default: []].append(String(fields[4]))
        }
        mountsByDevice = mounts
        let swaps = (FileAccess.readTextIfPresent("\(procRoot)/swaps") ?? "").split(separator: "\n").dropFirst()
        swapDevices = Set(swaps.compactMap { $0.split(separator: " ").first?.split(separator: "/").last.map(String.init) })
    }

    /// Walks real directories (not symbolic links) below `devicePath`, at most twelve levels deep
    /// (deep enough for a disk behind a USB host controller and a hub), and reports each
    /// directory whose `subsystem` is `net` or `block`.
    func scan(devicePath: String) -> [KernelUse] {
        var uses: [KernelUse] = []
        walk(devicePath, depth: 0, into: &uses)
        return uses
    }

    private func walk(_ path: String, depth: Int, into uses: inout [KernelUse]) {
        guard depth <= 12, let names = try? FileAccess.listDirectory(path) else { return }
        for name in names {
            let child = "\(path)/\(name)"
            guard isRealDirectory(child) else { continue }
            switch FileAccess.linkTargetName("\(child)/subsystem") {
            case "net":
                let flags = FileAccess.readTextIfPresent("\(child)/flags").flatMap { UInt32($0.dropFirst(2), radix: 16) } ?? 0
                uses.append(.networkInterface(name: name, isUp: flags & 0x1 != 0))  // IFF_UP
            case "block":
                let number = FileAccess.readTextIfPresent("\(child)/dev") ?? ""
                let holders = (try? FileAccess.listDirectory("\(child)/holders")) ?? []
                uses.append(.blockDevice(name: name, mountedAt: mountsByDevice[number] ?? [],
                                         heldBy: holders, isSwap: swapDevices.contains(name)))
            default:
                break
            }
            walk(child, depth: depth + 1, into: &uses)
        }
    }

    private func isRealDirectory(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
    }
}

#if canImport(Glibc)
import Glibc
#endif
