import FoundationEssentials
import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// Persistent overrides: the functions to hand to a user-mode driver at every boot, like
/// driverctl's `/etc/driverctl.d`.
///
/// One file per function in `overrides/` under the configuration directory
/// (`/etc/modeless/overrides/0000:03:00.0`, or `$MODELESS_CONFIG_DIR/overrides/…`), holding
/// `{"driver": "vfio-pci", "force": false}`. `modeless bind --persist` writes them,
/// `unbind --persist` and `overrides remove` delete them, and `overrides apply` (run at boot by
/// `modeless-overrides.service`) binds each function through ``PCIBinder`` with every check.
public struct OverrideStore: Sendable {
    /// What to do with one function at boot.
    public struct Override: Codable, Sendable, Equatable {
        /// The user-mode driver to bind it to.
        public var driver: UserModeDriver
        /// Whether the bind at boot passes `force` (given to `bind --persist --force`): it then
        /// binds even infrastructure, a device the kernel uses or one whose disks hold data.
        public var force: Bool

        /// An override binding to `driver`, passing `force` to the bind at boot.
        public init(driver: UserModeDriver, force: Bool = false) {
            self.driver = driver
            self.force = force
        }

        /// Reads `driver`, and `force` when present (absent is `false`).
        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            driver = try container.decode(UserModeDriver.self, forKey: .driver)
            force = try container.decodeIfPresent(Bool.self, forKey: .force) ?? false
        }
    }

    /// The configuration directory whose `overrides/` holds the files: `/etc/modeless`.
    public let configDirectory: String
    /// `CONFIG/overrides`.
    public var directory: String { "\(configDirectory)/overrides" }

    /// The default configuration directory.
    public static let defaultConfigDirectory = "/etc/modeless"

    /// The store under `configDirectory`, else `$MODELESS_CONFIG_DIR`, else `/etc/modeless`.
    public static func standard(configDirectory: String? = nil) -> OverrideStore {
        OverrideStore(configDirectory: configDirectory
            ?? getenv("MODELESS_CONFIG_DIR").map { String(cString: $0) } ?? defaultConfigDirectory)
    }

    /// The store whose overrides live in `configDirectory/overrides`, one file per function.
    public init(configDirectory: String) {
        self.configDirectory = configDirectory
    }

    /// The file of one function's override.
    public func file(for address: PCIAddress) -> String { "\(directory)/\(address)" }

    /// Every override, by address. A missing directory is an empty store.
    /// - Throws: ``BusError`` `.invalidOverride` naming the first file that cannot be used.
    public func load() throws(BusError) -> [PCIAddress: Override] {
        guard FileAccess.isDirectory(directory) else { return [:] }
        let names: [String]
        do { names = try FileAccess.listDirectory(directory) } catch {
            throw BusError(.systemFailure, "cannot list the persistent overrides in \(directory): \(error)",
                           remedy: "run as root, or point --config-dir at a readable directory")
        }
        var result: [PCIAddress: Override] = [:]
        for name in names.sorted() where !name.hasPrefix(".") {
            guard let address = PCIAddress(name), address.description == name else {
                throw BusError(.invalidOverride,
                               "\(directory)/\(name) is not named after a full PCI address such as 0000:03:00.0",
                               remedy: "remove it (rm \(directory)/\(name)); `modeless bind ADDR --persist` writes overrides")
            }
            result[address] = try read(file(for: address))
        }
        return result
    }

    /// The override of one function, or `nil` when it has none.
    public func override(for address: PCIAddress) throws(BusError) -> Override? {
        let path = file(for: address)
        return FileAccess.exists(path) ? try read(path) : nil
    }

    /// Refuses, before anything changes, when overrides cannot be written here (not root, a
    /// read-only `/etc`, a file where a directory should be). Creates nothing: a directory not
    /// there yet is writable when its nearest existing ancestor is a writable directory.
    public func checkWritable() throws(BusError) {
        var existing = directory
        while !FileAccess.exists(existing), let slash = existing.lastIndex(of: "/") {
            existing = slash == existing.startIndex ? "/" : String(existing[..<slash])
        }
        let remedy = "run as root (sudo modeless ...), or point --config-dir at a writable directory"
        guard FileAccess.isDirectory(existing) else {
            throw BusError(.notPermitted, "cannot write persistent overrides in \(directory): \(existing) is not a directory",
                           remedy: remedy)
        }
        guard access(existing, W_OK) == 0 else {
            throw BusError(.notPermitted, "cannot write persistent overrides in \(directory): \(existing) is not writable (\(Errno.current))",
                           remedy: remedy)
        }
    }

    /// Writes (or with `nil` removes) one function's override, replacing the file atomically.
    public func set(_ override: Override?, for address: PCIAddress) throws(BusError) {
        let path = file(for: address)
        guard let override else {
            if FileAccess.exists(path) && unlink(path) != 0 {
                throw BusError(.systemFailure, "cannot remove the persistent override \(path): \(Errno.current)",
                               remedy: "run as root (sudo modeless ...)")
            }
            return
        }
        do {
            try FileAccess.createDirectories(directory)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            try FileAccess.replaceFile(path, with: Array(try encoder.encode(override)) + [0x0A])
        } catch {
            throw BusError(.systemFailure, "cannot write the persistent override \(path): \(error)",
                           remedy: "run as root (sudo modeless ...), or point --config-dir at a writable directory")
        }
    }

    private func read(_ path: String) throws(BusError) -> Override {
        let bytes: [UInt8]
        do { bytes = try FileAccess.readBytes(path) } catch {
            throw BusError(.systemFailure, "cannot read the persistent override \(path): \(error)",
                           remedy: "run as root, or point --config-dir at a readable directory")
        }
        do {
            return try JSONDecoder().decode(Override.self, from: Data(bytes))
        } catch {
            throw BusError(.invalidOverride,
                           "\(path) is not a persistent override: expected {\"driver\": \"vfio-pci\" or \"uio_pci_generic\", \"force\": false}, found \(String(decoding: bytes.prefix(80), as: UTF8.self).trimmingBlanks())",
                           remedy: "fix or remove it (rm \(path)); `modeless bind ADDR --persist` writes a valid one")
        }
    }
}
