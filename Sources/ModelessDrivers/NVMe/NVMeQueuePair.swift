import ModelessDevice
import ModelessSystem

/// One submission queue and its completion queue, in DMA memory, with their doorbells.
///
/// Submission is serialized by `submitLock`. Completions are consumed by one party at a time:
/// the ISR in interrupt mode, a poller holding `submitLock` in polled mode.
///
/// Command identifiers come from a preallocated free list of `entries − 1` (the most commands
/// a queue can hold): an identifier is taken at submission and given back with
/// ``releaseIdentifier(_:)`` once its completion has been dealt with, so identifiers index
/// fixed per-queue tables and two commands in flight never share one.
final class NVMeQueuePair: @unchecked Sendable {
    let identifier: UInt16
    let entries: Int
    let submissions: DMABuffer
    let completions: DMABuffer
    private let registers: MMIORegion
    private let submissionDoorbell: Int
    private let completionDoorbell: Int
    let submitLock = ConditionLock()
    private var tail = 0
    private var head = 0
    private var phase: UInt32 = 1
    private let identifierLock = ConditionLock()
    private var freeIdentifiers: [UInt16]

    init(identifier: UInt16, entries: Int, device: any DeviceAccess, registers: MMIORegion, doorbellStride: Int) throws {
        self.identifier = identifier
        self.entries = entries
        self.registers = registers
        submissions = try device.allocateDMA(size: entries * 64)
        completions = try device.allocateDMA(size: entries * 16)
        try submissions.fill(0)
        try completions.fill(0)
        submissionDoorbell = NVMeRegister.doorbells + Int(identifier) * 2 * doorbellStride
        completionDoorbell = NVMeRegister.doorbells + (Int(identifier) * 2 + 1) * doorbellStride
        freeIdentifiers = (0..<UInt16(entries - 1)).reversed()
    }

    /// Writes `command` at the tail with a free identifier, calls `registered` with the
    /// identifier (before the device can complete it), rings the doorbell, and returns the
    /// identifier. Throws when `entries − 1` commands are already in flight. The caller holds
    /// `submitLock`.
    func submit(_ command: NVMeCommand, registered: (UInt16) -> Void = { _ in }) throws -> UInt16 {
        let identifier = try takeIdentifier()
        registered(identifier)
        try submit(command, identifier: identifier)
        return identifier
    }

    /// Takes a free command identifier; throws when `entries − 1` commands are in flight.
    func takeIdentifier() throws -> UInt16 {
        identifierLock.lock()
        let identifier = freeIdentifiers.popLast()
        identifierLock.unlock()
        guard let identifier else {
            throw NVMeController.Failure.badRequest("queue \(self.identifier) already has \(entries - 1) commands in flight, its most")
        }
        return identifier
    }

    /// Writes `command` with `identifier` (from ``takeIdentifier()``) at the tail and rings the
    /// doorbell. The caller holds `submitLock`.
    func submit(_ command: NVMeCommand, identifier: UInt16) throws {
        var command = command
        command.identifier = identifier
        let base = tail &* 64
        for index in 0..<16 {
            try submissions.store32(command.dwords[index], at: base + index &* 4)
        }
        tail = tail + 1 == entries ? 0 : tail + 1
        try registers.write32(UInt32(tail), at: submissionDoorbell)
    }

    /// Gives back the identifier of a command whose completion has been dealt with.
    func releaseIdentifier(_ identifier: UInt16) {
        identifierLock.lock()
        freeIdentifiers.append(identifier)
        identifierLock.unlock()
    }

    /// How many more commands can be submitted now.
    var freeSlots: Int { identifierLock.withLock { freeIdentifiers.count } }

    /// Takes every new completion (phase bit matching) in order, handing each to `visit`, then
    /// updates the head doorbell once. Returns how many it took. Builds nothing.
    @discardableResult
    func drain(_ visit: (NVMeCompletion) -> Void) throws -> Int {
        var count = 0
        while true {
            let offset = head &* 16
            let status = try completions.load32(at: offset + 12)
            guard (status >> 16) & 1 == phase else { break }
            let result = try completions.load32(at: offset)
            let queueInfo = try completions.load32(at: offset + 8)
            visit(NVMeCompletion(result: result, submissionQueueHead: UInt16(truncatingIfNeeded: queueInfo),
                                 identifier: UInt16(truncatingIfNeeded: status),
                                 statusType: UInt8((status >> 25) & 0x7), statusCode: UInt8((status >> 17) & 0xFF)))
            count += 1
            head += 1
            if head == entries { head = 0; phase ^= 1 }
        }
        if count > 0 { try registers.write32(UInt32(head), at: completionDoorbell) }
        return count
    }

    func free() {
        submissions.free()
        completions.free()
    }
}
