import ModelessDevice

/// Transmitting: a batch at a time, each frame filled in place in its DMA buffer, one tail
/// doorbell per batch.
extension E1000Driver {
    /// How many frames a batch may carry now: free descriptors after reclaiming those the
    /// NIC finished (at most ``ringSize`` − 1). The caller holds `transmitLock`.
    private func freeTransmitDescriptors() throws -> Int {
        while transmitClean != transmitTail,
              try transmitDescriptors.load8(at: transmitClean &* 16 + 12) & E1000Bit.descriptorDone != 0 {
            transmitClean = ringSlot(after: transmitClean)
        }
        return (transmitClean - transmitTail - 1 + ringSize) % ringSize
    }

    /// Sends up to `count` frames in one batch. `fill(index, &writer)` writes frame `index`
    /// of the batch (0, 1, …) straight into its transmit buffer, at most
    /// ``maximumFrame`` bytes without FCS; the frame's length is what it wrote
    /// (``DMAByteWriter/count``). The NIC pads frames shorter than 60 bytes and appends the FCS.
    ///
    /// Descriptors the NIC has finished are reclaimed first; the batch is cut to the free
    /// descriptors, so it never overruns the ring, and the tail register is written once.
    /// Returns how many frames were queued (0 when the ring is full: try again later). Nothing
    /// is allocated and nothing reference counted per frame.
    ///
    /// A frame shorter than ``minimumFrame`` is not sent: the frames before it are, and then
    /// ``Failure/badFrame(_:)`` is thrown.
    @discardableResult
    public func transmitFrames(count: Int, _ fill: (_ index: Int, _ frame: inout DMAByteWriter) -> Void) throws -> Int {
        guard count >= 0 else { throw Failure.badFrame("a batch holds zero or more frames, not \(count)") }
        return try transmitLock.withLock { () throws -> Int in
            let batch = min(count, try freeTransmitDescriptors())
            var queued = 0, bytes = 0
            var refused: Int?
            while queued < batch {
                let slot = transmitTail
                let length = try transmitBuffers.withWriter(of: transmitBuffers.chunk(slot), capacity: Self.maximumFrame) {
                    fill(queued, &$0)
                }.count
                guard length >= Self.minimumFrame else { refused = length; break }
                let offset = slot &* 16
                try transmitDescriptors.store16(UInt16(truncatingIfNeeded: length), at: offset + 8)
                try transmitDescriptors.store8(E1000Bit.commandEndOfPacket | E1000Bit.commandInsertFCS | E1000Bit.commandReportStatus,
                                               at: offset + 11)
                try transmitDescriptors.store8(0, at: offset + 12)
                transmitTail = ringSlot(after: slot)
                queued += 1
                bytes += length
            }
            if queued > 0 {
                try registers.write32(UInt32(transmitTail), at: E1000Register.transmitTail)
                transmitCounters.frames += queued
                transmitCounters.bytes += bytes
                transmitCounters.batches += 1
            }
            if let refused {
                throw Failure.badFrame("frame \(queued) of the batch is \(refused) bytes; a frame is \(Self.minimumFrame) to \(Self.maximumFrame)")
            }
            return queued
        }
    }

    /// Sends one Ethernet frame (without FCS; the NIC adds it), waiting for a free descriptor.
    /// It copies `frame`; ``transmitFrames(count:_:)`` fills frames in place instead.
    public func send(_ frame: [UInt8]) throws {
        guard (Self.minimumFrame...Self.maximumFrame).contains(frame.count) else {
            throw Failure.badFrame("a frame is \(Self.minimumFrame) to \(Self.maximumFrame) bytes, not \(frame.count)")
        }
        try waitUntil("a free transmit descriptor") {
            try transmitFrames(count: 1) { _, writer in writer.set(frame, at: 0) } == 1
        }
    }

    /// Transmit batches written so far (each one tail write).
    public var transmitBatches: Int { transmitLock.withLock { transmitCounters.batches } }
}
