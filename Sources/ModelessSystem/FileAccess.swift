import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Whole-file reads and single-write updates, the way sysfs and procfs files are used.
///
/// Sysfs attributes must be written in one `write(2)` and read from offset zero; these
/// helpers do exactly that and report failures as ``SystemError``.
public enum FileAccess {
    /// Reads a whole file, at most `limit` bytes.
    public static func readBytes(_ path: String, limit: Int = 1 << 20) throws(SystemError) -> [UInt8] {
        let fd = try systemCall("open", path) { open(path, O_RDONLY | O_CLOEXEC) }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while bytes.count < limit {
            let wanted = min(chunk.count, limit - bytes.count)
            let count = try systemCall("read", path) {
                chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, wanted) }
            }
            if count == 0 { break }
            bytes.append(contentsOf: chunk[0..<count])
        }
        return bytes
    }

    /// Reads a text file and strips the trailing newline and surrounding blanks.
    public static func readText(_ path: String) throws(SystemError) -> String {
        let bytes = try readBytes(path)
        return String(decoding: bytes, as: UTF8.self).trimmingBlanks()
    }

    /// Reads a text file, or returns `nil` if it does not exist or cannot be read.
    public static func readTextIfPresent(_ path: String) -> String? {
        try? readText(path)
    }

    /// Writes `text` to an existing file in one `write(2)` call, as sysfs requires.
    public static func writeText(_ text: String, to path: String) throws(SystemError) {
        let fd = try systemCall("open", path) { open(path, O_WRONLY | O_CLOEXEC) }
        defer { close(fd) }
        var bytes = Array(text.utf8)
        if bytes.isEmpty { bytes = [0x0A] }  // An empty write is a no-op in sysfs; a newline clears.
        let written = try systemCall("write", path) {
            bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        }
        if written != bytes.count {
            throw SystemError("write", path, errno: .ioError)
        }
    }

    /// Creates or replaces a regular file atomically (write to a temporary file, then rename).
    public static func replaceFile(_ path: String, with bytes: [UInt8], mode: mode_t = 0o644) throws(SystemError) {
        let temporary = "\(path).tmp.\(getpid())"
        let fd = try systemCall("open", temporary) { open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode) }
        do throws(SystemError) {
            var offset = 0
            while offset < bytes.count {
                offset += try systemCall("write", temporary) {
                    bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
                }
            }
            _ = try systemCall("fsync", temporary) { fsync(fd) }
            close(fd)
            _ = try systemCall("rename", path) { rename(temporary, path) }
        } catch {
            close(fd)
            unlink(temporary)
            throw error
        }
    }

    /// Creates a directory and its parents, like `mkdir -p`.
    public static func createDirectories(_ path: String, mode: mode_t = 0o755) throws(SystemError) {
        var prefix = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            prefix += "/" + component
            if mkdir(prefix, mode) != 0 {
                let error = Errno.current
                if error != .fileExists { throw SystemError("mkdir", prefix, errno: error) }
            }
        }
    }

    /// The target of a symbolic link.
    public static func readLink(_ path: String) throws(SystemError) -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = try systemCall("readlink", path) { readlink(path, &buffer, buffer.count - 1) }
        return String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The last path component of a symbolic link's target (`../../../bus/pci/drivers/e1000` → `e1000`),
    /// or `nil` if there is no such link.
    public static func linkTargetName(_ path: String) -> String? {
        guard let target = try? readLink(path) else { return nil }
        return target.split(separator: "/").last.map(String.init)
    }

    /// The names in a directory, without `.` and `..`, sorted.
    public static func listDirectory(_ path: String) throws(SystemError) -> [String] {
        guard let directory = opendir(path) else {
            throw SystemError("opendir", path, errno: .current)
        }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// Whether something exists at `path` (following symbolic links).
    public static func exists(_ path: String) -> Bool {
        access(path, F_OK) == 0
    }

    /// Whether `path` is a directory (following symbolic links).
    public static func isDirectory(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
    }
}

extension String {
    /// The string without leading and trailing spaces, tabs and newlines.
    public func trimmingBlanks() -> String {
        let blanks: Set<Character> = [" ", "\t", "\n", "\r"]
        guard let first = firstIndex(where: { !blanks.contains($0) }),
              let last = lastIndex(where: { !blanks.contains($0) }) else { return "" }
        return String(self[first...last])
    }
}
