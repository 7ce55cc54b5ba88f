import ModelessLogical
import ModelessSystem

/// The requests an instance began and completed, by their originators' request ids: what a
/// replacement or a surviving sibling consults so that a request sent again after a failover
/// is executed only once.
///
/// A ring of ``capacity`` entries in the instance's state file: a request's entry is written
/// when the instance begins it and rewritten when it completes, before the reply is sent.
/// Update rule for an entry: zero its seal (release), write the id and the state word, then
/// store the seal — a hash of both — with release ordering. A reader accepts an entry only
/// if its seal matches, so a process killed mid-update leaves an entry that reads as absent,
/// never a wrong one.
public struct RequestLedger: @unchecked Sendable {
    /// How many recent requests the ledger remembers.
    public static let capacity = 1024
    static let entrySize = 32
    static let entriesOffset = 64
    static let size = entriesOffset + capacity * entrySize

    /// A request's recorded progress.
    public enum Progress: UInt8, Sendable {
        /// Begun and not completed: in flight, or interrupted if the instance died.
        case begun = 1
        /// Completed, with the recorded outcome.
        case completed = 2
        /// Begun by an instance that died before completing it, as found by its replacement.
        case interrupted = 3
    }

    /// One remembered request.
    public struct Entry: Sendable, Equatable {
        /// The consumer's request id (`RequestHeader`'s), the same when a request is sent again after
        /// a failover.
        public var requestID: UInt64
        /// Whether the request was begun, completed or interrupted.
        public var progress: Progress
        /// The failure it completed with, nil for success.
        public var failure: LogicalDeviceError.Kind?
        /// How many output bytes its reply carried. A reply with output cannot be repeated
        /// from the ledger, so such a request is executed again (it must be idempotent: a
        /// read, a query).
        public var outputLength: Int
    }

    let file: SharedMemoryFile
    let offset: Int

    /// Records that request `requestID` begins; returns the slot to complete it in.
    public func begin(_ requestID: UInt64) -> Int {
        let cursor = file.loadAcquire(at: offset)
        file.storeRelease(cursor &+ 1, at: offset)
        let slot = Int(cursor % UInt64(Self.capacity))
        write(slot, Entry(requestID: requestID, progress: .begun, failure: nil, outputLength: 0))
        return slot
    }

    /// Records that the request begun in `slot` completed.
    public func complete(_ slot: Int, requestID: UInt64, failure: LogicalDeviceError.Kind?, outputLength: Int) {
        write(slot, Entry(requestID: requestID, progress: .completed, failure: failure, outputLength: outputLength))
    }

    /// The completed entry for `requestID`, if the ledger still remembers one.
    public func completed(_ requestID: UInt64) -> Entry? {
        entries().first { $0.entry.requestID == requestID && $0.entry.progress == .completed }?.entry
    }

    /// Requests begun and not completed.
    public func inFlight() -> [UInt64] {
        entries().filter { $0.entry.progress == .begun }.map(\.entry.requestID)
    }

    /// Marks every begun request interrupted (a replacement does this for its dead
    /// predecessor's requests) and returns their ids.
    @discardableResult
    public func markInterrupted() -> [UInt64] {
        var ids: [UInt64] = []
        for (slot, entry) in entries() where entry.progress == .begun {
            write(slot, Entry(requestID: entry.requestID, progress: .interrupted, failure: nil, outputLength: 0))
            ids.append(entry.requestID)
        }
        return ids
    }

    /// Every valid entry with its slot.
    func entries() -> [(slot: Int, entry: Entry)] {
        var found: [(Int, Entry)] = []
        for slot in 0..<Self.capacity {
            let base = offset + Self.entriesOffset + slot * Self.entrySize
            let seal = file.loadAcquire(at: base + 16)
            guard seal != 0 else { continue }
            let requestID = file.load(UInt64.self, at: base)
            let word = file.load(UInt64.self, at: base + 8)
            guard seal == Self.seal(requestID, word), let entry = Self.entry(requestID, word) else { continue }
            found.append((slot, entry))
        }
        return found
    }

    private func write(_ slot: Int, _ entry: Entry) {
        let base = offset + Self.entriesOffset + slot * Self.entrySize
        let word = UInt64(entry.progress.rawValue) | UInt64(entry.failure?.rawValue ?? 0) << 16 | UInt64(entry.outputLength) << 32
        file.storeRelease(0, at: base + 16)
        file.store(entry.requestID, at: base)
        file.store(word, at: base + 8)
        file.storeRelease(Self.seal(entry.requestID, word), at: base + 16)
    }

    static func entry(_ requestID: UInt64, _ word: UInt64) -> Entry? {
        guard let progress = Progress(rawValue: UInt8(truncatingIfNeeded: word)) else { return nil }
        let status = UInt16(truncatingIfNeeded: word >> 16)
        let failure = LogicalDeviceError.Kind(rawValue: status)
        guard status == 0 || failure != nil else { return nil }
        return Entry(requestID: requestID, progress: progress, failure: failure, outputLength: Int(word >> 32))
    }

    /// A non-zero hash of an entry's id and state word.
    static func seal(_ requestID: UInt64, _ word: UInt64) -> UInt64 {
        var hash = (requestID ^ 0x9E37_79B9_7F4A_7C15) &* 0xBF58_476D_1CE4_E5B9
        hash ^= word &* 0x94D0_49BB_1331_11EB
        hash ^= hash >> 31
        return hash | 1
    }
}
