import ModelessDevice
import ModelessSystem

/// One submission queue and its completion queue, in DMA memory, with their doorbells.
///
/// Submission is serialized by `submitLock`. Completions are consumed by one party at a time:
/// the ISR in interrupt mode, the submitting thread in polled mode.
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
    private var nextIdentifier: UInt16 = 0

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
    }

    /// Writes `command` at the tail with a fresh identifier, calls `registered` with the
    /// identifier (before the device can complete it), rings the doorbell, and returns the
    /// identifier. The caller holds `submitLock`.
    func submit(_ command: NVMeCommand, registered: (UInt16) -> Void = { _ in }) throws -> UInt16 {
        var command = command
        command.identifier = nextIdentifier
        nextIdentifier &+= 1
        registered(command.identifier)
        for (index, dword) in command.dwords.enumerated() {
            try submissions.store32(dword, at: tail * 64 + index * 4)
        }
        tail = (tail + 1) % entries
        try registers.write32(UInt32(tail), at: submissionDoorbell)
        return command.identifier
    }

    /// Takes every new completion (phase bit matching), updates the head doorbell once, and
    /// returns them in order.
    func drain() throws -> [NVMeCompletion] {
        var found: [NVMeCompletion] = []
        while true {
            let status = try completions.load32(at: head * 16 + 12)
            guard (status >> 16) & 1 == phase else { break }
            let result = try completions.load32(at: head * 16)
            let queueInfo = try completions.load32(at: head * 16 + 8)
            found.append(NVMeCompletion(result: result, submissionQueueHead: UInt16(truncatingIfNeeded: queueInfo),
                                        identifier: UInt16(truncatingIfNeeded: status),
                                        statusType: UInt8((status >> 25) & 0x7), statusCode: UInt8((status >> 17) & 0xFF)))
            head += 1
            if head == entries { head = 0; phase ^= 1 }
        }
        if !found.isEmpty { try registers.write32(UInt32(head), at: completionDoorbell) }
        return found
    }

    func free() {
        submissions.free()
        completions.free()
    }
}
