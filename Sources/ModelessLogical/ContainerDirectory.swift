import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// The directory where running containers' sockets live: the registry of user containers
/// and the kernel emulation's container. Only its owner may use it (mode 0700).
///
/// Chosen, in order, from `$MODELESS_CONTAINER_DIR`, `/run/modeless/containers` for root,
/// `$XDG_RUNTIME_DIR/modeless/containers`, and `/tmp/modeless-UID/containers`.
public struct ContainerDirectory: Sendable, Equatable {
    /// The directory holding the containers' sockets.
    public let path: String

    /// The directory at `path` (created, mode 0700, when a container first serves there).
    public init(path: String) { self.path = path }

    /// The directory for this process's user and environment.
    public static var standard: ContainerDirectory {
        if let path = getenv("MODELESS_CONTAINER_DIR").map({ String(cString: $0) }), !path.isEmpty {
            return ContainerDirectory(path: path)
        }
        if getuid() == 0 { return ContainerDirectory(path: "/run/modeless/containers") }
        if let runtime = getenv("XDG_RUNTIME_DIR").map({ String(cString: $0) }), !runtime.isEmpty {
            return ContainerDirectory(path: runtime + "/modeless/containers")
        }
        return ContainerDirectory(path: "/tmp/modeless-\(getuid())/containers")
    }

    /// The socket of container `name`.
    public func socketPath(_ name: String) -> String { path + "/" + name + ".sock" }

    /// Creates the directory (and its parents) if needed, and refuses one that another user
    /// owns or that others may enter.
    public func prepare() throws(LogicalDeviceError) {
        do { try FileAccess.createDirectories(path, mode: 0o700) } catch {
            throw LogicalDeviceError(.system, "cannot create the container directory: \(error)")
        }
        var status = stat()
        guard lstat(path, &status) == 0 else {
            throw LogicalDeviceError(.system, "cannot inspect the container directory \(path): \(Errno.current)")
        }
        guard status.st_mode & S_IFMT == S_IFDIR, status.st_uid == getuid(), status.st_mode & 0o077 == 0 else {
            throw LogicalDeviceError(
                .permissionDenied,
                "the container directory \(path) must be a directory owned by user \(getuid()) with mode 0700: fix it or set MODELESS_CONTAINER_DIR")
        }
    }

    /// The names of containers with a socket here (some may have ended without removing it).
    public func containerNames() -> [String] {
        guard let directory = opendir(path) else { return [] }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name.hasSuffix(".sock") { names.append(String(name.dropLast(5))) }
        }
        return names.sorted()
    }
}
