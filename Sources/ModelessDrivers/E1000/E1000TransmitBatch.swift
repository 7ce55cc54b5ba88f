import ModelessDevice

/// One transmit batch being filled, lent by ``E1000Driver/transmitBatch(upTo:_:)`` to its
/// closure, which appends frames one after another, each written in place into its transmit
/// buffer; the driver hands the whole batch to the NIC with one tail write when the closure
/// returns.
///
/// The batch is where the per-frame work happens, and all of it is inlined into the caller's
/// loop: the DMA buffers' checks (not freed, in range) were made once for the batch, so a
/// frame costs its fill, a slot compare for its buffer and one for its descriptor, and one
/// 64-bit store of the descriptor's length and command; no call, no division, no reference
/// counting, no allocation. It cannot be copied, so it cannot outlive the call that lent it.
public struct E1000TransmitBatch: ~Copyable {
    /// The transmit buffers, one per descriptor (slot `i` is descriptor `i`'s buffer).
    @usableFromInline let buffers: DMASlots
    /// The transmit descriptor ring.
    @usableFromInline let descriptors: DMASlots
    /// The descriptor the next frame goes into.
    @usableFromInline var slot: Int
    /// Frames appended so far.
    @usableFromInline var appended = 0
    /// The most frames the batch takes (lowered to ``appended`` once a frame was refused).
    @usableFromInline var limit: Int
    /// Descriptors to go until the next one that asks for a write-back (RS).
    @usableFromInline var untilReport: Int
    /// Every this many descriptors the NIC writes one back.
    @usableFromInline let reportInterval: Int
    /// Bytes appended so far.
    @usableFromInline var bytes = 0
    /// The length of a frame refused as too short, which ended the batch.
    @usableFromInline var refusedLength: Int?
    /// The descriptor's second half (``TransmitDescriptor/Field/secondHalf``) without the
    /// length, for a frame without and with RS.
    @usableFromInline let command: UInt64, reportingCommand: UInt64

    init(buffers: consuming DMASlots, descriptors: consuming DMASlots, tail: Int, limit: Int,
         untilReport: Int, reportInterval: Int) {
        self.buffers = buffers
        self.descriptors = descriptors
        slot = tail
        self.limit = limit
        self.untilReport = untilReport
        self.reportInterval = reportInterval
        command = TransmitDescriptor.secondHalf(length: 0, reportStatus: false)
        reportingCommand = TransmitDescriptor.secondHalf(length: 0, reportStatus: true)
    }

    /// Frames appended so far.
    public var count: Int { appended }

    /// How many more frames the batch takes: the free descriptors (at most what was asked
    /// for) less those appended; 0 once a frame was refused.
    public var room: Int { limit &- appended }

    /// Appends one frame: `fill` writes it into its transmit buffer, at most
    /// ``E1000Driver/maximumFrame`` bytes without FCS, and the frame's length is what it wrote
    /// (`DMAByteWriter.count`). Returns false, calling nothing, when the batch is full.
    ///
    /// A frame shorter than ``E1000Driver/minimumFrame`` is not sent and ends the batch (later
    /// appends return false); the frames before it are sent, and then
    /// ``E1000Driver/transmitBatch(upTo:_:)`` throws ``E1000Driver/Failure/badFrame(_:)``.
    @inlinable @inline(__always) @discardableResult
    public mutating func append(_ fill: (inout DMAByteWriter) -> Void) -> Bool {
        guard appended < limit else { return false }
        let slot = self.slot
        let length = buffers.withWriter(slot: slot, capacity: E1000Driver.maximumFrame, fill)
        guard length >= E1000Driver.minimumFrame else {
            refusedLength = length
            limit = appended
            return false
        }
        untilReport &-= 1
        let report = untilReport == 0
        if report { untilReport = reportInterval }
        // Length (bits 0–15) and the command byte (bits 24–31) in one store: the descriptor's
        // second half (TransmitDescriptor.Field.secondHalf, at byte 8).
        descriptors.store64(UInt64(truncatingIfNeeded: length) | (report ? reportingCommand : command), slot: slot, at: 8)
        self.slot = slot &+ 1 == descriptors.count ? 0 : slot &+ 1
        appended &+= 1
        bytes &+= length
        return true
    }

    /// Appends frames until the batch is full (or one is refused): `fill(index, &frame)`
    /// writes frame `index` of this call (0, 1, …), as ``append(_:)`` does. Returns how many it
    /// appended.
    ///
    /// The same work per frame as ``append(_:)``, with the batch's position, countdown and
    /// totals kept in locals for the loop and written back once: the compiler can then keep
    /// them in registers, which it cannot for the batch's own fields (they live in memory,
    /// and it cannot prove that the stores into DMA memory do not alias them).
    @inlinable @inline(__always) @discardableResult
    public mutating func appendAll(_ fill: (_ index: Int, _ frame: inout DMAByteWriter) -> Void) -> Int {
        var slot = self.slot, untilReport = self.untilReport, bytes = 0, index = 0
        let room = limit &- appended, ringCount = descriptors.count, interval = reportInterval
        let command = self.command, reportingCommand = self.reportingCommand
        while index < room {
            let length = buffers.withWriter(slot: slot, capacity: E1000Driver.maximumFrame) { fill(index, &$0) }
            guard length >= E1000Driver.minimumFrame else {
                refusedLength = length
                limit = appended &+ index
                break
            }
            untilReport &-= 1
            let report = untilReport == 0
            if report { untilReport = interval }
            descriptors.store64(UInt64(truncatingIfNeeded: length) | (report ? reportingCommand : command), slot: slot, at: 8)
            slot = slot &+ 1 == ringCount ? 0 : slot &+ 1
            index &+= 1
            bytes &+= length
        }
        self.slot = slot
        self.untilReport = untilReport
        appended &+= index
        self.bytes &+= bytes
        return index
    }
}
