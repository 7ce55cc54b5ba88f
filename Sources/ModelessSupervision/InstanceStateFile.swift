import ModelessSystem

/// An instance's saved state: a shared-memory file outside the instance's process, so that
/// what the instance recorded survives its crash and a replacement (or a surviving sibling)
/// can read it.
///
/// It holds a ``SavedRecord`` (the driver's own resume data: queue positions, counters) and
/// a ``RequestLedger`` (which requests the instance began and completed). Only the instance
/// writes its file; anyone may read it while it runs.
///
/// Layout (little-endian): magic `MLSTATE1`, a start count, the record's two slots, then the
/// ledger. See docs/supervision.md for the crash-safe update rules.
public final class InstanceStateFile: @unchecked Sendable {
    static let magic: UInt64 = 0x3145_5441_5453_4C4D  // "MLSTATE1"
    static let startsOffset = 8
    static let recordOffset = 64
    static let ledgerOffset = recordOffset + 2 * SavedRecord.slotSize
    static let size = ledgerOffset + RequestLedger.size

    let file: SharedMemoryFile
    /// The shared-memory file's path, which the supervisor passes to the instance as
    /// `MODELESS_INSTANCE_STATE`.
    public var path: String { file.path }
    /// The driver's resume data.
    public let record: SavedRecord
    /// The requests the instance began and completed.
    public let ledger: RequestLedger

    /// Opens (creating if needed) the state file at `path`. A file that exists but is not an
    /// instance state file is an error, and is left as it was.
    public init(path: String, readOnly: Bool = false) throws(SupervisionError) {
        do {
            file = try SharedMemoryFile(path: path, size: Self.size, readOnly: readOnly)
        } catch {
            throw SupervisionError("cannot open the instance state file \(path): \(error)")
        }
        let found = file.loadAcquire(at: 0)
        if found == 0 && !readOnly {
            file.storeRelease(Self.magic, at: 0)
        } else if found != Self.magic {
            file.close()
            throw SupervisionError("\(path) is not an instance state file (it does not start with MLSTATE1): remove it or choose another state directory")
        }
        record = SavedRecord(file: file, offset: Self.recordOffset)
        ledger = RequestLedger(file: file, offset: Self.ledgerOffset)
    }

    /// How many instances have started from this file; ``beginStart()`` counts one more.
    public var starts: UInt64 { file.loadAcquire(at: Self.startsOffset) }

    /// Records that an instance starts from this file, and returns its start number (1 for
    /// the first).
    @discardableResult
    public func beginStart() -> UInt64 {
        let next = starts + 1
        file.storeRelease(next, at: Self.startsOffset)
        return next
    }

    /// Unmaps the file (the file itself stays).
    public func close() { file.close() }
}

/// The driver's own resume data, up to ``capacity`` bytes, replaced as a whole.
///
/// Update rule: two slots. A save writes the slot not holding the newest record — first
/// zeroing its sequence number, then the length, checksum and bytes, and last the new
/// sequence number with release ordering. A load takes the slot with the highest sequence
/// number whose checksum matches. A process killed mid-save leaves the previous record intact.
public struct SavedRecord: @unchecked Sendable {
    static let slotSize = 4096
    static let slotHeader = 16  // UInt64 sequence, UInt32 length, UInt32 checksum
    /// The most bytes a record holds.
    public static let capacity = slotSize - slotHeader

    let file: SharedMemoryFile
    let offset: Int

    /// Replaces the record with `bytes`.
    public func save(_ bytes: [UInt8]) throws(SupervisionError) {
        guard bytes.count <= Self.capacity else {
            throw SupervisionError("a saved record holds at most \(Self.capacity) bytes, not \(bytes.count)")
        }
        let newest = newestSlot()
        let slot = newest.map { 1 - $0.slot } ?? 0
        let sequence = (newest?.sequence ?? 0) + 1
        let base = offset + slot * Self.slotSize
        file.storeRelease(0, at: base)
        file.store(UInt32(bytes.count), at: base + 8)
        file.store(Self.checksum(bytes), at: base + 12)
        file.write(bytes, at: base + Self.slotHeader)
        file.storeRelease(sequence, at: base)
    }

    /// The newest complete record, or nil if none was ever saved.
    public func load() -> [UInt8]? {
        guard let newest = newestSlot() else { return nil }
        return newest.bytes
    }

    private func newestSlot() -> (slot: Int, sequence: UInt64, bytes: [UInt8])? {
        var best: (slot: Int, sequence: UInt64, bytes: [UInt8])?
        for slot in 0..<2 {
            let base = offset + slot * Self.slotSize
            let sequence = file.loadAcquire(at: base)
            let length = Int(file.load(UInt32.self, at: base + 8))
            guard sequence != 0, length <= Self.capacity else { continue }
            let bytes = file.read(at: base + Self.slotHeader, count: length)
            guard file.load(UInt32.self, at: base + 12) == Self.checksum(bytes), sequence > (best?.sequence ?? 0) else { continue }
            best = (slot, sequence, bytes)
        }
        return best
    }

    /// FNV-1a over the bytes, folded to 32 bits, with the length mixed in.
    static func checksum(_ bytes: [UInt8]) -> UInt32 {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325 ^ UInt64(bytes.count)
        for byte in bytes {
            hash ^= UInt64(byte)
            hash &*= 0x0000_0100_0000_01B3
        }
        return UInt32(truncatingIfNeeded: hash ^ (hash >> 32))
    }
}
