import ModelessDevice
import ModelessRuntime

/// Transmitting: a batch at a time, each frame filled in place in its DMA buffer, one tail
/// doorbell per batch and no register read; the NIC writes back only every
/// ``transmitReportInterval``-th descriptor and the last of each batch (RS), as DPDK's
/// tx_rs_thresh does, so that it does one descriptor write-back (a DMA write) per group of
/// frames instead of one per frame.
extension E1000Driver {
    /// Moves the clean index past the descriptors the NIC finished, and returns how many
    /// frames a batch may carry now (at most ``ringSize`` − 1). Only descriptors submitted
    /// with RS are written back; one written back means every one before it is done too.
    ///
    /// The last descriptor of every batch carries RS, so the one before the tail is checked
    /// first: when the NIC has finished it, everything is free after one descriptor read. Only
    /// when it has not are the descriptors walked from the clean index, to free what is done.
    @inline(__always)
    private func reclaim(_ state: inout TransmitState) -> Int {
        if state.clean != state.tail,
           transmitRing.transmit(transmitRing.slot(before: state.tail)).status.contains(.descriptorDone) {
            state.clean = state.tail
            return ringSize &- 1
        }
        var slot = state.clean
        while slot != state.tail {
            let descriptor = transmitRing.transmit(slot)
            slot = transmitRing.slot(after: slot)
            if descriptor.reportsStatus {
                guard descriptor.status.contains(.descriptorDone) else { break }
                state.clean = slot
            }
        }
        return (state.clean &- state.tail &- 1 &+ ringSize) % ringSize
    }

    /// Sends up to `count` frames in one batch. `fill(index, &writer)` writes frame `index`
    /// of the batch (0, 1, …) straight into its transmit buffer, at most
    /// ``maximumFrame`` bytes without FCS; the frame's length is what it wrote
    /// (`DMAByteWriter.count`). The NIC pads frames shorter than 60 bytes and appends the FCS.
    ///
    /// Descriptors the NIC has finished are reclaimed first; the batch is cut to the free
    /// descriptors, so it never overruns the ring, and the tail register is written once.
    /// Returns how many frames were queued (0 when the ring is full: try again later). Nothing
    /// is allocated and nothing reference counted per frame. `fill` runs with the transmit
    /// ring's spin lock held: it must not wait or send.
    ///
    /// A frame shorter than ``minimumFrame`` is not sent: the frames before it are, and then
    /// ``Failure/badFrame(_:)`` is thrown. Once the NIC has stopped answering, throws
    /// ``Failure/notResponding(_:)`` and sends nothing.
    @discardableResult
    public func transmitFrames(count: Int, _ fill: (_ index: Int, _ frame: inout DMAByteWriter) -> Void) throws -> Int {
        guard count >= 0 else { throw Failure.badFrame("a batch holds zero or more frames, not \(count)") }
        try checkResponding()
        let (queued, refused) = transmit.withLock { state -> (Int, Int?) in
            let batch = min(count, reclaim(&state))
            var queued = 0, bytes = 0
            var refused: Int?
            while queued < batch {
                let slot = state.tail
                let length: Int
                do {
                    length = try transmitBuffers.withWriter(of: transmitBuffers.chunk(slot), capacity: Self.maximumFrame) {
                        fill(queued, &$0)
                    }.count
                } catch {
                    fault.report(error)
                    break
                }
                guard length >= Self.minimumFrame else { refused = length; break }
                let report = queued &+ 1 == batch || slot % transmitReportInterval == transmitReportInterval &- 1
                transmitRing.transmit(slot).submit(length: length, reportStatus: report)
                state.tail = transmitRing.slot(after: slot)
                queued &+= 1
                bytes &+= length
            }
            if queued > 0 {
                registers.store(UInt32(state.tail), to: E1000Register.transmitTail)
                state.frames &+= queued
                state.bytes &+= bytes
                state.batches &+= 1
            }
            return (queued, refused)
        }
        if let refused {
            throw Failure.badFrame("frame \(queued) of the batch is \(refused) bytes; a frame is \(Self.minimumFrame) to \(Self.maximumFrame)")
        }
        try checkResponding()
        return queued
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
