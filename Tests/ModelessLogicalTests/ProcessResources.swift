import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// What a process holds, read from `/proc/PID`: resident memory (`status`'s `VmRSS`), memory
/// mappings (lines of `maps`), threads (entries of `task`) and open descriptors (entries of `fd`).
struct ProcessResources: Equatable, CustomStringConvertible {
    var residentKiB: Int
    var mappings: Int
    var threads: Int
    var descriptors: Int

    /// Reads them for process `processID` (which must belong to this user).
    init(of processID: Int32) throws {
        let proc = "/proc/\(processID)"
        let status = String(decoding: try FileAccess.readBytes(proc + "/status"), as: UTF8.self)
        guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kib = Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
        else { throw SystemError("read VmRSS", proc + "/status", errno: .noData) }
        residentKiB = kib
        mappings = try FileAccess.readBytes(proc + "/maps", limit: 256 << 20).reduce(0) { $0 + ($1 == UInt8(ascii: "\n") ? 1 : 0) }
        threads = try FileAccess.listDirectory(proc + "/task").count
        descriptors = try FileAccess.listDirectory(proc + "/fd").count
    }

    var description: String { "RSS \(residentKiB) KiB, \(mappings) mappings, \(threads) threads, \(descriptors) fds" }

    /// What each open descriptor of process `processID` refers to, for a failure's message.
    static func descriptorTargets(of processID: Int32) -> [String] {
        let directory = "/proc/\(processID)/fd"
        return ((try? FileAccess.listDirectory(directory)) ?? []).sorted { (Int($0) ?? 0) < (Int($1) ?? 0) }.map {
            "\($0) → \((try? FileAccess.readLink("\(directory)/\($0)")) ?? "?")"
        }
    }
}
