import ModelessDevice
import ModelessRuntime

/// Transmitting: a batch at a time, each frame filled in place in its DMA buffer, one tail
/// doorbell per batch and no register read; the NIC writes back only every
/// ``transmitReportInterval``-th descriptor and the last of each batch (RS), as DPDK's
/// tx_rs_thresh does, so that it does one descriptor write-back (a DMA write) per group of
/// frames instead of one per frame.
///
/// The work per frame is the caller's fill and a few instructions of ``E1000TransmitBatch``,
/// inlined into the caller's loop: the DMA buffers are checked once per batch, the RS decision
/// is a countdown, the ring index wraps with a compare.
extension E1000Driver {
    /// Moves the clean index past the descriptors the NIC finished, and returns how many
    /// frames a batch may carry now (at most ``ringSize`` − 1). Only descriptors submitted
    /// with RS are written back; one written back means every one before it is done too.
    ///
    /// The last descriptor of every batch carries RS, so the one before the tail is checked
    /// first: when the NIC has finished it, everything is free after one descriptor read. Only
    /// when it has not are the descriptors walked from the clean index, to free what is done.
    /// The ring was checked once for the batch (`descriptors`), so each read checks only its slot.
    @inline(__always)
    private func reclaim(_ state: inout TransmitState, _ descriptors: borrowing DMASlots) -> Int {
        if state.clean != state.tail,
           descriptors.transmitStatus(transmitRing.slot(before: state.tail)).contains(.descriptorDone) {
            state.clean = state.tail
            return ringSize &- 1
        }
        var slot = state.clean
        while slot != state.tail {
            let reports = descriptors.transmitCommand(slot).contains(.reportStatus)
            if reports && !descriptors.transmitStatus(slot).contains(.descriptorDone) { break }
            slot = transmitRing.slot(after: slot)
            if reports { state.clean = slot }
        }
        // The descriptors from the tail up to the one before the clean index, around the ring.
        let free = state.clean &- state.tail &- 1
        return free < 0 ? free &+ ringSize : free
    }

    /// Sends a batch of up to `count` frames: `body` is called once, with the batch, and
    /// appends the frames to it (``E1000TransmitBatch/append(_:)``), each filled straight into
    /// its transmit buffer; when it returns, the batch is handed to the NIC with one tail write.
    /// This is the datapath's fast form: the per-frame work is inlined into `body`'s loop.
    ///
    /// Descriptors the NIC has finished are reclaimed first; the batch takes at most the free
    /// descriptors, so it never overruns the ring (``E1000TransmitBatch/room`` says how many it
    /// takes). Returns how many frames were queued (0 when the ring is full: try again later).
    /// Nothing is allocated and nothing reference counted per frame. `body` runs
    /// with the transmit ring's spin lock held: it must not wait or send.
    ///
    /// A frame shorter than ``minimumFrame`` is not sent: the frames before it are, and then
    /// ``Failure/badFrame(_:)`` is thrown. Once the NIC has stopped answering, throws
    /// ``Failure/notResponding(_:)`` and sends nothing.
    @discardableResult
    public func transmitBatch(upTo count: Int, _ body: (inout E1000TransmitBatch) -> Void) throws -> Int {
        guard count >= 0 else { throw Failure.badFrame("a batch holds zero or more frames, not \(count)") }
        try checkResponding()
        let (queued, refused) = transmit.withLock { state -> (Int, Int?) in
            // The buffers' and the ring's checks (not freed, in range), once for the batch.
            var batch: E1000TransmitBatch
            do {
                let descriptors = try transmitRing.memory.slots(stride: DescriptorRing.descriptorSize, count: ringSize)
                let limit = min(count, reclaim(&state, descriptors))
                guard limit > 0 else { return (0, nil) }
                batch = E1000TransmitBatch(buffers: try transmitBuffers.slots(), descriptors: descriptors, tail: state.tail,
                                           limit: limit, untilReport: state.untilReport, reportInterval: transmitReportInterval)
            } catch {
                fault.report(error)
                return (0, nil)
            }
            body(&batch)
            let queued = batch.appended
            if queued > 0 {
                // The last frame of the batch asks for a write-back too, so the next reclaim
                // frees the whole batch by reading one descriptor.
                let last = transmitRing.slot(before: batch.slot)
                batch.descriptors.store8(TransmitDescriptor.command(reportStatus: true).rawValue, slot: last,
                                         at: TransmitDescriptor.Field.command.offset)
                batch.descriptors.orderStoresBeforeDoorbell()
                registers.store(UInt32(batch.slot), to: E1000Register.transmitTail)
                state.tail = batch.slot
                state.untilReport = transmitReportInterval
                state.frames &+= queued
                state.bytes &+= batch.bytes
                state.batches &+= 1
            }
            return (queued, batch.refusedLength)
        }
        if let refused {
            throw Failure.badFrame("frame \(queued) of the batch is \(refused) bytes; a frame is \(Self.minimumFrame) to \(Self.maximumFrame)")
        }
        try checkResponding()
        return queued
    }

    /// Sends up to `count` frames in one batch. `fill(index, &writer)` writes frame `index`
    /// of the batch (0, 1, …) straight into its transmit buffer, at most
    /// ``maximumFrame`` bytes without FCS; the frame's length is what it wrote
    /// (`DMAByteWriter.count`). The NIC pads frames shorter than 60 bytes and appends the FCS.
    ///
    /// The same as ``transmitBatch(upTo:_:)`` with a loop that appends `fill`'s frames until
    /// the batch is full: one closure call per frame; ``transmitBatch(upTo:_:)`` saves it where
    /// the caller's fill can be inlined. Returns how many frames were queued (0 when the ring is
    /// full: try again later); the same errors.
    @discardableResult
    public func transmitFrames(count: Int, _ fill: (_ index: Int, _ frame: inout DMAByteWriter) -> Void) throws -> Int {
        try transmitBatch(upTo: count) { batch in batch.appendAll(fill) }
    }

    /// Sends one Ethernet frame (without FCS; the NIC adds it). It copies `frame`;
    /// ``transmitFrames(count:_:)`` fills frames in place instead.
    ///
    /// When the ring is full, a caller at passive level waits (up to a second) for the NIC to
    /// write a descriptor back; one that may not wait (an ISR, a DPC, a frame handler, or any
    /// code with interrupts disabled) gets ``Failure/transmitRingFull`` at once.
    public func send(_ frame: [UInt8]) throws {
        guard (Self.minimumFrame...Self.maximumFrame).contains(frame.count) else {
            throw Failure.badFrame("a frame is \(Self.minimumFrame) to \(Self.maximumFrame) bytes, not \(frame.count)")
        }
        let queue = { () throws -> Bool in try self.transmitFrames(count: 1) { _, writer in writer.set(frame, at: 0) } == 1 }
        if try queue() { return }
        guard !runtime.isAtInterruptLevel, !runtime.interruptsDisabledOnThisThread else { throw Failure.transmitRingFull }
        guard !lifecycle.withLock({ $0.stopped }) else { throw Failure.stopped }
        // Ask for the transmit-written-back interrupt (the ISR masks it again) while waiting.
        if receivesByInterrupt {
            registers.store(interruptCauses.transmit.rawValue, to: E1000Register.interruptMaskSet)
        }
        try Self.waitUntil("a free transmit descriptor", runtime: runtime, event: progress, queue)
    }

    /// Transmit batches written so far: each one tail write (TDT), the transmit path's only
    /// register access, so that register accesses per frame sent are this over
    /// ``statistics``' `framesSent`.
    public var transmitBatches: Int { transmit.withLock { $0.batches } }
}
