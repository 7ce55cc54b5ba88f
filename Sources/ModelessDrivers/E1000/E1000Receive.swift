import ModelessDevice
import ModelessRuntime

/// Receiving: a batch at a time, each frame lent as a view of its DMA buffer; and the
/// interrupt side, NAPI style.
extension E1000Driver {
    /// Receive causes: receive timer, descriptors low, receiver overrun.
    static let receiveCauses = E1000Bit.causeReceiveTimer | E1000Bit.causeReceiveLow | E1000Bit.causeReceiveOverrun

    /// Takes up to `budget` received frames off the ring, in order, lending each to `body` as
    /// a read-only view of its DMA buffer (valid only during that call), then gives the
    /// descriptors back to the NIC with one tail write. Returns how many descriptors it took
    /// (each a whole frame: with 2 KiB buffers a standard frame never spans two). Nothing is
    /// allocated and nothing reference counted per frame.
    ///
    /// `body` runs with the receive ring locked: it may send, but must not receive.
    @discardableResult
    public func receiveFrames(budget: Int, _ body: (borrowing DMABytes) -> Void) -> Int {
        precondition(budget > 0, "the receive budget must be positive")
        return receiveLock.withLock {
            var taken = 0, frames = 0, bytes = 0
            while taken < budget {
                let slot = receiveNext
                let offset = slot &* 16
                guard let status = try? receiveDescriptors.load8(at: offset + 12), status & E1000Bit.descriptorDone != 0 else { break }
                let length = Int((try? receiveDescriptors.load16(at: offset + 8)) ?? 0)
                if status & E1000Bit.endOfPacket != 0, length > 0, length <= Self.bufferSize,
                   (try? receiveBuffers.withBytes(of: receiveBuffers.chunk(slot), count: length, body)) != nil {
                    frames += 1
                    bytes += length
                }
                try? receiveDescriptors.store8(0, at: offset + 12)
                receiveNext = ringSlot(after: slot)
                taken += 1
            }
            if taken > 0 {
                // The tail is the last descriptor handed back: the NIC may fill up to it.
                let tail = receiveNext == 0 ? ringSize - 1 : receiveNext - 1
                try? registers.write32(UInt32(tail), at: E1000Register.receiveTail)
                receiveCounters.frames += frames
                receiveCounters.bytes += bytes
            }
            return taken
        }
    }

    /// Takes up to `budget` frames and hands them to ``onFrameView`` or ``onFrame``.
    @discardableResult
    func deliverReceived(budget: Int) -> Int {
        let view = onFrameView, copy = onFrame
        let taken: Int
        if let view {
            taken = receiveFrames(budget: budget) { frame in view(frame) }
        } else if let copy {
            taken = receiveFrames(budget: budget) { frame in copy(frame.copyToArray()) }
        } else {
            taken = receiveFrames(budget: budget) { _ in }
        }
        receiveLock.withLock {
            receiveCounters.passes += 1
            if taken == budget { receiveCounters.budgetExhausted += 1 }
        }
        return taken
    }

    /// Whether the NIC has finished the next receive descriptor.
    var receiveRingHasFrame: Bool {
        receiveLock.withLock {
            ((try? receiveDescriptors.load8(at: receiveNext &* 16 + 12)) ?? 0) & E1000Bit.descriptorDone != 0
        }
    }

    /// Attaches the ISR and the receive DPC, and unmasks the receive and link causes.
    ///
    /// NAPI style: the ISR masks receive interrupts and queues the DPC; the DPC takes up to
    /// ``receiveBudget`` frames, and if it used the whole budget queues itself again with
    /// interrupts still masked (polling while frames keep coming). Only when it leaves the ring
    /// empty does it unmask them, then looks once more, so that a frame that landed between its
    /// last look and the unmask is not left waiting for the next interrupt.
    func attachReceiveInterrupt(_ kind: InterruptKind) throws {
        let vector = try device.enableInterrupts(kind, count: 1)[0]
        let receive = runtime.makeDPC("e1000 receive") { [unowned self] in self.receivePass() }
        receiveDPC = receive
        let registers = self.registers
        attachment = try runtime.attachInterrupt(vector, name: "e1000", acknowledge: {
            UInt64((try? registers.read32(at: E1000Register.interruptCause)) ?? 0)  // Reading clears the causes.
        }) { cause in
            if UInt32(truncatingIfNeeded: cause) & Self.receiveCauses != 0 {
                try? registers.write32(Self.receiveCauses, at: E1000Register.interruptMaskClear)
                receive.queue()
            }
        }
        try registers.write32(Self.receiveCauses | E1000Bit.causeLinkStatus, at: E1000Register.interruptMaskSet)
    }

    /// One pass of the receive DPC.
    private func receivePass() {
        if deliverReceived(budget: receiveBudget) == receiveBudget {
            if !stopping.withLock({ isStopping }) { receiveDPC?.queue() }
            return
        }
        try? registers.write32(Self.receiveCauses, at: E1000Register.interruptMaskSet)
        if receiveRingHasFrame {
            try? registers.write32(Self.receiveCauses, at: E1000Register.interruptMaskClear)
            receiveDPC?.queue()
        }
    }
}
