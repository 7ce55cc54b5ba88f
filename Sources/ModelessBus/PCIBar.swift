/// One base address register as the kernel reports it in sysfs `resource`.
public struct PCIBar: Sendable, Equatable, Codable {
    /// Whether the BAR decodes memory or I/O port space.
    public enum Space: String, Sendable, Codable { case memory, io }

    /// BAR number, 0–5.
    public var index: Int
    /// Memory or I/O port space.
    public var space: Space
    /// The bus address the kernel assigned.
    public var start: UInt64
    /// Size in bytes.
    public var size: UInt64
    /// A memory BAR that takes two BAR slots and may lie above 4 GiB.
    public var is64Bit: Bool
    /// A memory BAR the CPU may read ahead and merge writes to (not registers with side effects).
    public var isPrefetchable: Bool

    /// A BAR as sysfs's `resource` file describes it.
    public init(index: Int, space: Space, start: UInt64, size: UInt64, is64Bit: Bool, isPrefetchable: Bool) {
        self.index = index
        self.space = space
        self.start = start
        self.size = size
        self.is64Bit = is64Bit
        self.isPrefetchable = isPrefetchable
    }

    // IORESOURCE_* flags from include/linux/ioport.h.
    static let flagIO: UInt64 = 0x100
    static let flagMemory: UInt64 = 0x200
    static let flagPrefetch: UInt64 = 0x2000
    static let flagMemory64: UInt64 = 0x0010_0000

    /// Parses sysfs `resource`: one line per resource, `start end flags` in hex; lines 0–5 are the BARs.
    /// Unused BARs (all zero) and the upper half of a 64-bit BAR are left out.
    public static func parse(resourceFile text: String) -> [PCIBar] {
        var bars: [PCIBar] = []
        for (index, line) in text.split(separator: "\n").prefix(6).enumerated() {
            let fields = line.split(separator: " ").compactMap { UInt64($0.dropFirst(2), radix: 16) }
            guard fields.count == 3 else { continue }
            let (start, end, flags) = (fields[0], fields[1], fields[2])
            guard end > start || (start != 0 && end == start), flags & (flagIO | flagMemory) != 0 else { continue }
            bars.append(PCIBar(index: index, space: flags & flagIO != 0 ? .io : .memory,
                               start: start, size: end - start + 1,
                               is64Bit: flags & flagMemory64 != 0, isPrefetchable: flags & flagPrefetch != 0))
        }
        return bars
    }

    /// `BAR0: memory, 1 MiB, 32-bit, non-prefetchable at 0xfea00000`.
    public var summary: String {
        var kind = space == .io ? "I/O ports" : "memory"
        if space == .memory {
            kind += is64Bit ? ", 64-bit" : ", 32-bit"
            kind += isPrefetchable ? ", prefetchable" : ", non-prefetchable"
        }
        return "BAR\(index): \(Self.formatSize(size)), \(kind) at 0x\(String(start, radix: 16))"
    }

    /// `4 KiB`, `1 MiB`, `256 B`.
    public static func formatSize(_ size: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = size
        var unit = 0
        while value >= 1024, value % 1024 == 0, unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return "\(value) \(units[unit])"
    }
}
