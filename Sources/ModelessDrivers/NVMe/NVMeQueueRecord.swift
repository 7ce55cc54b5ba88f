import ModelessDevice

/// Where one queue pair stands, kept in memory that outlives the driver's process (the
/// controller's kept DMA memory, ``NVMeKeptLayout``), so that a successor can resume the
/// queue without a controller reset (docs/kernel-interfaces.md, "Resuming the controller").
///
/// The driver saves it under the queue's lock on every change, before the doorbell write the
/// change leads to: so what the controller has been told never runs ahead of the record. Two
/// slots are written in turn, each with a generation and a checksum: a process killed in the
/// middle of a save leaves one slot torn (its checksum fails) and the other whole, one change
/// older, and still true of the controller, whose doorbell that change had not yet reached.
struct NVMeQueueRecord {
    /// What one save holds.
    struct Snapshot: Equatable {
        /// Increases by one per save; the newer whole slot wins.
        var generation: UInt64
        /// The submission tail: entries up to it are written (and rung, or about to be).
        var tail: Int
        /// The completion head: entries before it were taken.
        var head: Int
        /// The phase tag of the next completion entry to take.
        var phase: Bool
        /// Commands submitted whose completion entry has not been taken: what a successor drains.
        var awaited: Int
    }

    /// The two slots: 64 bytes of the kept memory, 32 per slot.
    let slots: DMABuffer
    static let size = 64
    private static let slotSize = 32

    /// The record in `slots`, a view of ``size`` bytes.
    init(_ slots: DMABuffer) {
        self.slots = slots
    }

    /// Saves `snapshot` in the slot its generation selects: fields first, the checksum last.
    @inline(__always)
    func save(_ snapshot: Snapshot) throws(DeviceError) {
        let base = Int(snapshot.generation & 1) * Self.slotSize
        let positions = UInt64(UInt32(truncatingIfNeeded: snapshot.tail)) | UInt64(UInt32(truncatingIfNeeded: snapshot.head)) << 32
        let progress = (snapshot.phase ? 1 : 0) | UInt64(UInt32(truncatingIfNeeded: snapshot.awaited)) << 32
        try slots.store64(snapshot.generation, at: base)
        try slots.store64(positions, at: base + 8)
        try slots.store64(progress, at: base + 16)
        try slots.store64(Self.checksum(snapshot.generation, positions, progress), at: base + 24)
    }

    /// The newest whole slot, or nil when neither is (never saved, cleared, or both torn).
    func load() throws(DeviceError) -> Snapshot? {
        var newest: Snapshot?
        for slot in 0..<2 {
            let base = slot * Self.slotSize
            let generation = try slots.load64(at: base)
            let positions = try slots.load64(at: base + 8)
            let progress = try slots.load64(at: base + 16)
            guard try slots.load64(at: base + 24) == Self.checksum(generation, positions, progress),
                  Int(generation & 1) == slot else { continue }
            let snapshot = Snapshot(generation: generation, tail: Int(UInt32(truncatingIfNeeded: positions)),
                                    head: Int(positions >> 32), phase: progress & 1 == 1, awaited: Int(progress >> 32))
            if newest.map({ snapshot.generation > $0.generation }) ?? true { newest = snapshot }
        }
        return newest
    }

    /// Both slots zeroed: nothing to resume from.
    func clear() throws(DeviceError) {
        for offset in stride(from: 0, to: Self.size, by: 8) { try slots.store64(0, at: offset) }
    }

    /// Where every checksum of the kept memory starts.
    static let checksumSeed: UInt64 = 0xCBF2_9CE4_8422_2325

    /// A checksum of a slot's three words that no all-zero slot passes (a cleared record is no record).
    @inline(__always)
    static func checksum(_ generation: UInt64, _ positions: UInt64, _ progress: UInt64) -> UInt64 {
        mix(mix(mix(checksumSeed, generation), positions), progress)
    }

    /// One step of the FNV-style mixing the kept memory's checksums use (the header's too).
    @inline(__always)
    static func mix(_ hash: UInt64, _ word: UInt64) -> UInt64 {
        let multiplied = (hash ^ word) &* 0x0000_0100_0000_01B3
        return multiplied ^ multiplied >> 29
    }
}
