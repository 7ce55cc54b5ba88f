import FoundationEssentials
import ModelessSystem

/// Remembers, across runs, which driver each function had before Modeless bound it, so
/// `unbind` can give it back.
///
/// Kept in `bindings.json` under `/run/modeless` (bindings do not survive a reboot, and
/// neither does `/run`), or under `$MODELESS_STATE_DIR` when set.
public struct BindingStore: Sendable {
    /// What a function had before its first bind to a user-mode driver.
    public struct Record: Codable, Sendable, Equatable {
        /// The driver it was bound to, or `nil` if none.
        public var originalDriver: String?
        /// Its `driver_override`, or `nil` if empty.
        public var originalOverride: String?
    }

    /// The state directory (`/run/modeless` by default), which also holds the access marks.
    public let directory: String
    /// The JSON record of the functions Modeless bound and the driver each had before.
    public var file: String { "\(directory)/bindings.json" }

    /// The store at `$MODELESS_STATE_DIR`, or `/run/modeless`.
    public static func standard() -> BindingStore {
        BindingStore(directory: getenv("MODELESS_STATE_DIR").map { String(cString: $0) } ?? "/run/modeless")
    }

    /// The store in `directory`; the directory is created at the first record.
    public init(directory: String) {
        self.directory = directory
    }

    /// All records, by address. A missing file is an empty store.
    public func load() throws(BusError) -> [PCIAddress: Record] {
        guard FileAccess.exists(file) else { return [:] }
        do {
            let bytes = try FileAccess.readBytes(file)
            let byText = try JSONDecoder().decode([String: Record].self, from: Data(bytes))
            return Dictionary(uniqueKeysWithValues: byText.compactMap { key, value in
                PCIAddress(key).map { ($0, value) }
            })
        } catch {
            throw BusError(.systemFailure, "cannot read the binding record \(file): \(error)",
                           remedy: "fix or delete the file; it only remembers which driver each device had")
        }
    }

    /// What `address` had before Modeless bound it, or nil if Modeless did not bind it.
    /// - Throws: ``BusError`` of kind ``BusError/Kind/systemFailure`` when the record exists but
    ///   cannot be read or parsed.
    public func record(for address: PCIAddress) throws(BusError) -> Record? {
        try load()[address]
    }

    /// Sets or clears the record of one function.
    public func setRecord(_ record: Record?, for address: PCIAddress) throws(BusError) {
        var all = try load()
        all[address] = record
        if all.isEmpty {
            if FileAccess.exists(file) && unlink(file) != 0 {
                throw BusError(.systemFailure, "cannot remove the binding record \(file): \(Errno.current)",
                               remedy: "set MODELESS_STATE_DIR to a writable directory")
            }
            return
        }
        do {
            try FileAccess.createDirectories(directory)
            let byText = Dictionary(uniqueKeysWithValues: all.map { ($0.key.description, $0.value) })
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try FileAccess.replaceFile(file, with: Array(try encoder.encode(byText)))
        } catch {
            throw BusError(.systemFailure, "cannot write the binding record \(file): \(error)",
                           remedy: "set MODELESS_STATE_DIR to a writable directory")
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
