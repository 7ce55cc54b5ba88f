import ModelessDevice
@testable import ModelessDrivers
import ModelessModels
import ModelessRuntime
import Testing

/// A successor resumes the controller a killed predecessor left running, from the state it
/// saved in kept memory, instead of resetting it; and resets it when that state cannot be
/// trusted (docs/kernel-interfaces.md, "Resuming the controller").
@Suite("The NVMe driver resumes a predecessor's controller")
struct NVMeResumptionTests {
    /// A predecessor "killed" (``NVMeController/abandonAsIfKilled()``) with `rung` writes
    /// submitted and completed but never taken, and `unrung` written into its ring but not rung;
    /// each write of one page of `pattern(lba)` at lba 64 + 8 × i, from the pool returned
    /// (whose memory must stay until the writes are done).
    private static func killedPredecessor(_ device: ModeledDevice, _ runtime: any DriverRuntime, rung: Int, unrung: Int) throws -> (NVMeController, DMAPool) {
        let first = try NVMeController(device: device, runtime: runtime, completion: .msix)
        #expect(first.resumption == nil, "nothing was handed over")
        first.setCompletionHandler { _ in }
        let pool = try DMAPool(device: device, chunkSize: 4096, count: rung + unrung)
        let blocks = 4096 / first.identity.blockSize
        first.abandonAsIfKilled()
        for index in 0..<(rung + unrung) {
            if index == rung { first.withIOQueue(0) { $0.plug() } }  // never unplugged: never rung
            let lba = UInt64(64 + 8 * index)
            try pool.write(pattern(lba), to: pool.chunk(index))
            try first.submitWrite(lba: lba, blocks: blocks, from: pool.chunk(index), of: pool, tag: UInt64(index), queue: 0)
        }
        return (first, pool)
    }

    private static func pattern(_ lba: UInt64) -> [UInt8] { (0..<4096).map { UInt8(truncatingIfNeeded: Int(lba) &* 31 &+ $0 &* 7) } }

    /// The memory a successor in this process starts with: the predecessor's kept memory, as a
    /// handed-over one.
    private static func inherited(from first: NVMeController, _ device: ModeledDevice, _ runtime: any DriverRuntime) throws -> NVMeQueueMemory {
        let registers = try device.region(0)
        return try NVMeQueueMemory(device: device, registers: registers, capabilities: try NVMeController.probe(registers), runtime: runtime,
                                   completion: .msix, ioQueueLimit: nil, inheriting: first.keptMemory)
    }

    @Test(arguments: ExecutionMode.allCases)
    func aSuccessorResumesWithoutAResetAndCompletesWhatWasInFlight(_ mode: ExecutionMode) throws {
        let device = try ModeledDevice(NVMeModel())
        defer { device.close() }
        let verifier = DriverVerifier()
        let runtime = try makeRuntime(mode, options: RuntimeOptions(verifier: verifier))
        defer { runtime.shutdown() }
        let (first, pool) = try Self.killedPredecessor(device, runtime, rung: 3, unrung: 2)
        defer { pool.buffer.free() }
        let second = try NVMeController(device: device, runtime: runtime, completion: .msix, memory: Self.inherited(from: first, device, runtime))
        defer { second.stop() }
        #expect(second.resumption == "resumed without a reset, 5 completion(s) of the predecessor's commands drained", "\(second.resumption ?? "nil")")
        #expect(!second.startSteps.contains("reset") && !second.startSteps.contains("identify"), "\(second.startSteps)")
        #expect(second.identity == first.identity)
        #expect(second.ioQueueCount == first.ioQueueCount)
        let blocks = 4096 / second.identity.blockSize
        for index in 0..<5 {
            let lba = UInt64(64 + 8 * index)
            #expect(try second.read(lba: lba, blocks: blocks) == Self.pattern(lba), "write \(index), in flight at the kill, landed")
        }
        // New commands on every queue, by interrupt: identifiers and ring positions go on from the drain.
        for round in 0..<40 {
            let data = (0..<512).map { UInt8(truncatingIfNeeded: round &+ $0) }
            try second.write(lba: UInt64(round), data)
            #expect(try second.read(lba: UInt64(round), blocks: 1) == data)
        }
        #expect(verifier.reports.isEmpty, "\(verifier.reports)")
    }

    @Test func aSavedStateThatFailsItsChecksumIsRefusedAndTheControllerReset() throws {
        try refusal(contains: "checksum") { first in try first.keptMemory.store64(0xDEAD, at: 8 + 8 * 8) }
    }

    @Test func aQueueWithoutAWholeRecordIsRefusedAndTheControllerReset() throws {
        try refusal(contains: "no whole saved record") { first in
            for offset in stride(from: 0, to: NVMeQueueRecord.size, by: 8) {
                try first.keptMemory.store64(0x5A5A, at: NVMeKeptLayout.recordOffset(1) + offset)
            }
        }
    }

    @Test func aDeviceWhoseBusMasteringWasTurnedOffIsReset() throws {
        try refusal(contains: "bus mastering is off") { _ in
            let command = try device.config.command()
            try device.config.write16(command.subtracting(.busMaster).rawValue, at: 0x04)
        }
    }

    private let device: ModeledDevice

    init() throws { device = try ModeledDevice(NVMeModel()) }

    /// A successor of a killed predecessor whose state `spoil` made untrustworthy: refuses to
    /// resume, saying `reason`, resets the controller and serves as after any start.
    private func refusal(contains reason: String, _ spoil: (NVMeController) throws -> Void) throws {
        defer { device.close() }
        let runtime = try makeRuntime(.user)
        defer { runtime.shutdown() }
        let (first, pool) = try Self.killedPredecessor(device, runtime, rung: 2, unrung: 1)
        defer { pool.buffer.free() }
        try spoil(first)
        let second = try NVMeController(device: device, runtime: runtime, completion: .msix, memory: Self.inherited(from: first, device, runtime))
        defer { second.stop() }
        #expect(second.resumption?.hasPrefix("refused: ") == true && second.resumption?.contains(reason) == true, "\(second.resumption ?? "nil")")
        #expect(second.startSteps.contains("reset") && second.startSteps.contains("identify"), "\(second.startSteps)")
        let data = (0..<512).map { UInt8(truncatingIfNeeded: 3 &* $0) }
        try second.write(lba: 9, data)
        #expect(try second.read(lba: 9, blocks: 1) == data)
    }

    @Test func aRecordTornInItsNewerSlotFallsBackToTheOlderOne() throws {
        defer { device.close() }
        let slots = try device.allocateDMA(size: NVMeQueueRecord.size)
        let record = NVMeQueueRecord(slots)
        #expect(try record.load() == nil, "zeroed memory is no record")
        let older = NVMeQueueRecord.Snapshot(generation: 6, tail: 5, head: 3, phase: true, awaited: 2)
        let newer = NVMeQueueRecord.Snapshot(generation: 7, tail: 6, head: 3, phase: true, awaited: 3)
        try record.save(older)
        try record.save(newer)
        #expect(try record.load() == newer)
        try slots.store64(9, at: 32 + 8)  // the newer slot's positions, torn
        #expect(try record.load() == older)
        try slots.store64(9, at: 8)
        #expect(try record.load() == nil)
        try record.save(newer)
        try record.clear()
        #expect(try record.load() == nil)
    }
}
