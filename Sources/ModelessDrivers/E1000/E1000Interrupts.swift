import ModelessDevice
import ModelessRuntime

/// How the driver takes the NIC's interrupts, chosen at start from the receive mode and the
/// controller's table entry (``E1000Variant``).
public enum E1000InterruptScheme: Sendable, Equatable, CustomStringConvertible {
    /// One INTx or MSI vector for every cause; the acknowledge routine reads ICR, which clears it.
    case line(InterruptKind)
    /// MSI-X with a vector per cause (82574L): receive queue 0, transmit queue 0 and the
    /// other causes (link) each on its own vector, routed by IVAR. The NIC clears a cause from
    /// ICR and masks it when its vector fires (EIAC), so the receive and transmit ISRs read
    /// no register at all.
    case msixPerCause
    /// MSI-X with one vector for every cause (82574L, or when fewer vectors are offered): the
    /// acknowledge routine reads ICR and clears what it read by writing it back (in MSI-X
    /// mode reading ICR need not clear it).
    case msixShared

    /// The mode in words for the driver's start line: the line kind, or which MSI-X layout.
    public var description: String {
        switch self {
        case .line(let kind): "\(kind)"
        case .msixPerCause: "msix (a vector per cause)"
        case .msixShared: "msix (one vector)"
        }
    }
}

/// The interrupt causes the driver uses, which differ in MSI-X mode (82574L: RXQ0, TXQ0 and
/// OTHER instead of RXT0, TXDW and LSC alone).
struct E1000CauseSet: Sendable {
    /// Frames were received (the receive DPC's causes).
    let receive: InterruptCauses
    /// A transmit descriptor was written back (unmasked only while a sender waits).
    let transmit: InterruptCauses
    /// The link changed.
    let link: InterruptCauses

    static let line = E1000CauseSet(receive: .receive, transmit: .transmitDescriptorWritten, link: .linkStatusChange)
    static let msix = E1000CauseSet(receive: .receiveQueue0, transmit: .transmitQueue0, link: [.other, .linkStatusChange])
}

extension E1000Driver {
    /// Which MSI-X layout to ask for on a controller that has MSI-X.
    public enum MSIXVectors: Sendable, Equatable {
        /// A vector each for receive, transmit and the other causes (one shared vector when
        /// the device offers fewer than three).
        case perCause
        /// One vector for every cause.
        case one
    }

    /// The causes of the scheme in use (the line's before interrupts are attached).
    var interruptCauses: E1000CauseSet {
        switch interruptScheme {
        case .msixPerCause, .msixShared: .msix
        case .line, nil: .line
        }
    }

    /// Attaches the ISRs and the receive DPC, and unmasks the receive and link causes.
    ///
    /// With one vector (INTx, MSI, or MSI-X shared) the acknowledge routine reads ICR; an
    /// all-ones ICR means the NIC is gone, reported once in ``failure`` by the ISR and
    /// otherwise ignored. The ISR, NAPI style, masks the receive causes and queues the DPC;
    /// the DPC takes up to ``receiveBudget`` frames, and if it used the whole budget queues
    /// itself again with interrupts still masked (polling while frames keep coming). Only when
    /// it leaves the ring empty does it unmask them, then looks once more, so that a frame
    /// that landed between its last look and the unmask is not left waiting for the next
    /// interrupt. A written-back transmit descriptor (unmasked only while a sender waits)
    /// wakes the senders. With a vector per cause the NIC masks the cause itself when it fires.
    func attachInterrupt(_ kind: InterruptKind) throws {
        guard variant.interruptKinds.contains(kind) else {
            throw Failure.badConfiguration("the \(variant) offers \(variant.interruptKinds.map(\.description).joined(separator: ", ")) interrupts, not \(kind)")
        }
        // Unretained, so that a pass takes no reference: the driver retires the DPC before it goes (deinit).
        let driver = Unmanaged.passUnretained(self)
        let dpc = runtime.makeDPC("e1000 receive") { driver._withUnsafeGuaranteedRef { $0.receivePass() } }
        receiveDPC = dpc
        let scheme: E1000InterruptScheme
        if kind == .msix, let routing = variant.msix {
            let perCause = msixVectors == .perCause && device.vectorCount(.msix) >= 3
            scheme = perCause ? .msixPerCause : .msixShared
            routeMSIX(routing, perCause: perCause)
        } else {
            scheme = .line(kind)
        }
        interruptScheme = scheme
        let vectors = try device.enableInterrupts(kind, count: scheme == .msixPerCause ? 3 : 1)
        var attachments: [InterruptAttachment] = []
        do {
            if scheme == .msixPerCause {
                attachments.append(try attachReceiveVector(vectors[0], dpc))
                attachments.append(try attachTransmitVector(vectors[1]))
                attachments.append(try attachOtherVector(vectors[2]))
            } else {
                attachments.append(try attachSharedVector(vectors[0], dpc, clearsByWriting: scheme == .msixShared))
            }
        } catch {
            attachments.forEach { runtime.detachInterrupt($0) }
            throw error
        }
        lifecycle.withLock { $0.attachments = attachments }
        let causes = interruptCauses
        registers.store(causes.receive.union(causes.link).rawValue, to: E1000Register.interruptMaskSet)
    }

    /// IVAR, EIAC and CTRL_EXT for MSI-X: receive queue 0, transmit queue 0 and the other
    /// causes to vectors 0, 1, 2 (or all to 0); with a vector per cause, each cause is cleared
    /// from ICR and masked when its vector fires (EIAC, with CTRL_EXT.IAME clear), and masking
    /// a cause clears its pending bit (CTRL_EXT.PBA_CLR).
    private func routeMSIX(_ routing: E1000MSIXRouting, perCause: Bool) {
        let allocation = perCause ? routing.allocation(receive: 0, transmit: 1, other: 2) : routing.allocation(receive: 0, transmit: 0, other: 0)
        registers.store(allocation, to: routing.register)
        let autoClear: InterruptCauses = perCause ? [.receiveQueue0, .transmitQueue0, .other] : []
        registers.store(autoClear.rawValue, to: E1000Register.extendedAutoClear)
        var control = ExtendedControl(rawValue: registers.load(E1000Register.extendedControl))
        control.remove(.autoMaskOnAcknowledge)
        control.insert(.clearPendingOnMask)
        registers.store(control.rawValue, to: E1000Register.extendedControl)
    }

    /// One vector for every cause.
    private func attachSharedVector(_ vector: InterruptVector, _ dpc: DeferredProcedureCall,
                                    clearsByWriting: Bool) throws -> InterruptAttachment {
        let registers = self.registers, fault = self.fault, progress = self.progress, causes = interruptCauses
        return try runtime.attachInterrupt(vector, name: "e1000", acknowledge: {
            let read = registers.load(E1000Register.interruptCause)  // Reading clears it, except in MSI-X mode:
            if clearsByWriting, read != .max, read != 0 { registers.store(read, to: E1000Register.interruptCause) }
            return UInt64(read)
        }) { cause in
            // All-ones: the NIC is gone. Reported here, where interrupts are disabled and the
            // fault's spin lock may be taken (the acknowledge routine runs before that).
            guard cause != UInt64(UInt32.max) else { return fault.report("ICR reads all-ones in the ISR") }
            let raised = InterruptCauses(rawValue: UInt32(truncatingIfNeeded: cause))
            if !raised.isDisjoint(with: causes.receive) {
                registers.store(causes.receive.rawValue, to: E1000Register.interruptMaskClear)
                dpc.queue()
            }
            if !raised.isDisjoint(with: causes.transmit) {
                registers.store(causes.transmit.rawValue, to: E1000Register.interruptMaskClear)
                progress.signal()
            }
            if !raised.isDisjoint(with: causes.link) { progress.signal() }
        }
    }

    /// MSI-X vector 0: frames received. The NIC has cleared and masked RXQ0; the DPC unmasks it.
    private func attachReceiveVector(_ vector: InterruptVector, _ dpc: DeferredProcedureCall) throws -> InterruptAttachment {
        try runtime.attachInterrupt(vector, name: "e1000 receive", acknowledge: {
            UInt64(InterruptCauses.receiveQueue0.rawValue)
        }) { _ in dpc.queue() }
    }

    /// MSI-X vector 1: a transmit descriptor written back. The NIC has cleared and masked
    /// TXQ0, which a waiting sender unmasks again.
    private func attachTransmitVector(_ vector: InterruptVector) throws -> InterruptAttachment {
        let progress = self.progress
        return try runtime.attachInterrupt(vector, name: "e1000 transmit", acknowledge: {
            UInt64(InterruptCauses.transmitQueue0.rawValue)
        }) { _ in progress.signal() }
    }

    /// MSI-X vector 2: the other causes (link). The NIC has cleared and masked OTHER; the
    /// acknowledge routine clears the causes behind it (LSC) by writing them back to ICR (not
    /// the queues' causes, which their own vectors and the DPC handle), the ISR unmasks OTHER.
    private func attachOtherVector(_ vector: InterruptVector) throws -> InterruptAttachment {
        let registers = self.registers, fault = self.fault, progress = self.progress
        let queues: InterruptCauses = [.receiveQueue0, .transmitQueue0]
        return try runtime.attachInterrupt(vector, name: "e1000 other", acknowledge: {
            let read = registers.load(E1000Register.interruptCause)
            if read != .max {
                let others = InterruptCauses(rawValue: read).subtracting(queues)
                if !others.isEmpty { registers.store(others.rawValue, to: E1000Register.interruptCause) }
            }
            return UInt64(read)
        }) { cause in
            guard cause != UInt64(UInt32.max) else { return fault.report("ICR reads all-ones in the ISR") }
            progress.signal()
            registers.store(E1000CauseSet.msix.link.rawValue, to: E1000Register.interruptMaskSet)
        }
    }
}
