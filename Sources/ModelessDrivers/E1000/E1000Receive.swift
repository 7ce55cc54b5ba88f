#if canImport(Glibc)
import Glibc
#endif
import ModelessDevice
import ModelessRuntime

/// Receiving: a batch at a time, each frame lent as a view of its DMA buffer; and who does it
/// (the caller, a polling thread, or the receive DPC, NAPI style).
extension E1000Driver {
    /// Takes up to `budget` received frames off the ring, in order, lending each to `body` as
    /// a read-only view of its DMA buffer (valid only during that call), then gives the
    /// descriptors back to the NIC with one tail write. Returns how many descriptors it took
    /// (each a whole frame: with 2 KiB buffers a standard frame never spans two; one the NIC
    /// flagged as bad is counted in ``receiveErrors`` and not lent). Nothing is allocated and
    /// nothing reference counted per frame.
    ///
    /// `body` runs with the receive ring's spin lock held, so with interrupts disabled: it may
    /// transmit (without waiting for a descriptor), but must not wait, sleep or receive.
    /// Throws ``Failure/notResponding(_:)`` once the NIC has stopped answering.
    @discardableResult
    public func receiveFrames(budget: Int, _ body: (borrowing DMABytes) -> Void) throws -> Int {
        precondition(budget > 0, "the receive budget must be positive")
        try checkResponding()
        return receive.withLock { state in takeFrames(&state, budget: budget, body) }
    }

    /// The receive loop, with the receive lock held.
    @inline(__always)
    private func takeFrames(_ state: inout ReceiveState, budget: Int, _ body: (borrowing DMABytes) -> Void) -> Int {
        var taken = 0
        while taken < budget {
            let descriptor = receiveRing.receive(state.next)
            let status = descriptor.status
            guard status.contains(.descriptorDone) else { break }
            let length = descriptor.length
            if status.contains(.endOfPacket), descriptor.errors.isDisjoint(with: .frame), length > 0, length <= Self.bufferSize {
                do {
                    try receiveBuffers.withBytes(of: receiveBuffers.chunk(state.next), count: length, body)
                } catch {
                    fault.report(error)
                    break
                }
                state.frames &+= 1
                state.bytes &+= length
            } else {
                state.errors &+= 1
            }
            descriptor.recycle()
            state.next = receiveRing.slot(after: state.next)
            taken &+= 1
        }
        if taken > 0 {
            // The tail is the last descriptor handed back: the NIC may fill up to it.
            registers.store(UInt32(receiveRing.slot(before: state.next)), to: E1000Register.receiveTail)
        }
        return taken
    }

    /// Received frames, each lent to this handler as a view of its DMA buffer (valid only
    /// during the call; no copy); it runs in the receive DPC or the polling thread, with the
    /// receive lock held (see ``receiveFrames(budget:_:)``). Takes precedence over ``onFrame``.
    public var onFrameView: (@Sendable (borrowing DMABytes) -> Void)? {
        get { receive.withLock { $0.handlers.view } }
        set { receive.withLock { $0.handlers = FrameHandlers(view: newValue, copy: $0.handlers.copy) } }
    }

    /// Received frames, each copied into an array for this handler (convenient, but it
    /// allocates per frame); used when ``onFrameView`` is nil. Same rules as ``onFrameView``.
    public var onFrame: (@Sendable ([UInt8]) -> Void)? {
        get { receive.withLock { $0.handlers.copy } }
        set { receive.withLock { $0.handlers = FrameHandlers(view: $0.handlers.view, copy: newValue) } }
    }

    /// One pass of the receive DPC or the polling thread, with the receive lock held: takes up
    /// to ``receiveBudget`` frames and hands them to the handler. Returns how many it took.
    /// The handlers are reached through an unretained reference, so a pass retains nothing.
    private func deliverReceived(_ state: inout ReceiveState) -> Int {
        let taken = state.handlersReference._withUnsafeGuaranteedRef { handlers in
            takeFrames(&state, budget: receiveBudget) { frame in handlers.deliver(frame) }
        }
        state.passes &+= 1
        if taken == receiveBudget { state.budgetExhausted &+= 1 }
        return taken
    }

    /// The polling thread: passes over the ring until ``stop()``, napping 50 µs after an empty
    /// one; every 2000 empty passes it reads STATUS, so that a NIC that went away is noticed.
    func pollUntilStopped() {
        var idle = 0
        while true {
            let taken = receive.withLock { state -> Int? in state.stopping ? nil : deliverReceived(&state) }
            guard let taken, !fault.isRaised else { return }
            if taken > 0 { idle = 0; continue }
            idle &+= 1
            if idle % 2000 == 0 { _ = linkUp }
            usleep(50)
        }
    }

    /// Whether receive processing is by interrupts.
    var receivesByInterrupt: Bool { receiveDPC != nil }

    /// One pass of the receive DPC, all of it under the receive lock (so that ``stop()``,
    /// once it has set `stopping`, knows no pass is half done).
    func receivePass() {
        receive.withLock { state in
            guard !state.stopping else { return }
            if deliverReceived(&state) == receiveBudget {
                _ = receiveDPCReference?._withUnsafeGuaranteedRef { $0.queue() }
                return
            }
            let causes = interruptCauses.receive.rawValue
            registers.store(causes, to: E1000Register.interruptMaskSet)
            if receiveRing.receive(state.next).status.contains(.descriptorDone) {
                registers.store(causes, to: E1000Register.interruptMaskClear)
                _ = receiveDPCReference?._withUnsafeGuaranteedRef { $0.queue() }
            }
        }
    }
}
