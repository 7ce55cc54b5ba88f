import ModelessSystem

/// A process that has one of a device's character device nodes open.
///
/// While a process holds a function through VFIO, the kernel's unbind from vfio-pci waits,
/// without end, for it to let go; ``PCIBinder`` refuses instead, naming the process.
public struct NodeHolder: Sendable, Equatable, CustomStringConvertible {
    /// The process id.
    public var pid: Int32
    /// Its command name (`/proc/PID/comm`), or `?` when it ended during the scan.
    public var command: String
    /// The node it has open, as the kernel names it (`/dev/vfio/6`).
    public var node: String

    /// A holder: process `pid`, named `command`, with `node` open.
    public init(pid: Int32, command: String, node: String) {
        self.pid = pid
        self.command = command
        self.node = node
    }

    /// `pid 1234 (modeless) has /dev/vfio/6 open`.
    public var description: String { "pid \(pid) (\(command)) has \(node) open" }
}

/// Finds the processes holding given nodes by reading the links in `/proc/PID/fd`.
///
/// It reads only `procRoot`, so tests substitute a directory tree with `PID/fd/N` links and
/// `PID/comm` files. Processes whose descriptors cannot be read (another user's, without
/// root) or that end during the scan are skipped.
struct NodeHolderScanner {
    let procRoot: String

    func holders(of nodes: Set<String>) -> [NodeHolder] {
        let processes = ((try? FileAccess.listDirectory(procRoot)) ?? []).compactMap { Int32($0) }.sorted()
        var found: [NodeHolder] = []
        for pid in processes {
            let descriptors = "\(procRoot)/\(pid)/fd"
            guard let names = try? FileAccess.listDirectory(descriptors) else { continue }
            var held = Set<String>()
            for name in names {
                guard let target = try? FileAccess.readLink("\(descriptors)/\(name)"), nodes.contains(target) else { continue }
                held.insert(target)
            }
            guard !held.isEmpty else { continue }
            let command = FileAccess.readTextIfPresent("\(procRoot)/\(pid)/comm") ?? "?"
            found += held.sorted().map { NodeHolder(pid: pid, command: command, node: $0) }
        }
        return found
    }
}
