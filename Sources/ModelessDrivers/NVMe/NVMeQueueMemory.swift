import ModelessDevice
import ModelessRuntime
import ModelessSystem

/// The DMA memory an ``NVMeController`` starts with (the bounce buffer, its PRP list page, the
/// admin queue and the I/O queues), made ahead of the start: by a warm standby while the
/// controller's holder still runs it, so that the takeover maps nothing. Making it only reads
/// CAP (to size the queues and place their doorbells) and allocates: it writes no register.
///
/// Given to ``NVMeController/init(device:runtime:completion:commandTimeout:ioQueueLimit:memory:)``,
/// which owns it from then on (and frees it when it stops); memory that is not used is freed
/// with ``free()``.
public final class NVMeQueueMemory: @unchecked Sendable {
    let registers: MMIORegion
    let capabilities: NVMeCapabilities
    let bounce: NVMeController.BounceBuffer
    let admin: NVMeQueuePair
    let ioQueues: [NVMeQueuePair]
    /// The completion method and I/O queue limit the memory was sized for.
    let completion: NVMeController.Completion
    let ioQueueLimit: Int?
    /// The memory the queues and their saved state live in (``NVMeKeptLayout``): kept DMA
    /// memory, which a successor inherits, unless a predecessor's too small to reuse was still
    /// in use when this was made.
    let kept: DMABuffer
    let layout: NVMeKeptLayout
    /// Whether ``kept`` came from a predecessor, as it and the controller left it: the start
    /// may resume the controller from it instead of resetting it.
    let inherited: Bool
    /// Whether the memory is a predecessor's, handed over with the device, which the start may
    /// resume the controller from: the device's takeover should then leave bus mastering on
    /// (the start turns it off itself when it resets the controller instead).
    public var holdsPredecessorsQueues: Bool { inherited }
    /// A predecessor's kept memory that could not be reused: freed once the controller was
    /// reset (until then the controller may still write it).
    private var retired: DMABuffer?
    private var taken = false
    private var released = false

    /// Allocates the memory a controller on `device` started with `completion` and
    /// `ioQueueLimit` uses, in the kept memory a predecessor handed over with the device when
    /// there is (`DeviceAccess.inheritKeptDMA()`), else in new kept memory. Fails as the
    /// controller's start would when the device does not answer as an NVMe controller;
    /// allocates nothing then. Writes no register.
    public convenience init(device: any DeviceAccess, runtime: any DriverRuntime, completion: NVMeController.Completion,
                            ioQueueLimit: Int? = nil) throws {
        let registers = try device.region(0)
        try self.init(device: device, registers: registers, capabilities: try NVMeController.probe(registers), runtime: runtime,
                      completion: completion, ioQueueLimit: ioQueueLimit)
    }

    /// Allocates the memory for a controller whose registers and capabilities were read
    /// already (the controller's own start, when nothing was made ahead). Allocates nothing
    /// when it fails. `inheriting` (for tests: a predecessor's kept memory in the same process)
    /// is used as a handed-over one would be.
    init(device: any DeviceAccess, registers: MMIORegion, capabilities: NVMeCapabilities, runtime: any DriverRuntime,
         completion: NVMeController.Completion, ioQueueLimit: Int?, inheriting: DMABuffer? = nil) throws {
        self.registers = registers
        self.capabilities = capabilities
        self.completion = completion
        self.ioQueueLimit = ioQueueLimit
        let limit = capabilities.queueEntryLimit
        let layout = NVMeKeptLayout(adminEntries: min(NVMeController.adminQueueEntries, limit),
                                    ioEntries: min(NVMeController.maximumQueueEntries, limit),
                                    ioQueues: NVMeController.wantedIOQueues(completion, ioQueueLimit))
        self.layout = layout
        var buffers: [DMABuffer] = []
        var handed: DMABuffer?
        do {
            handed = try inheriting ?? device.inheritKeptDMA()
            if let handed, handed.size >= layout.size {
                kept = handed
                inherited = true
            } else if let handed {
                retired = handed
                kept = try device.allocateDMA(size: layout.size)
                inherited = false
            } else {
                kept = try device.allocateKeptDMA(size: layout.size)
                inherited = false
            }
            buffers.append(kept)
            let data = try device.allocateDMA(size: NVMeController.bounceBytes)
            buffers.append(data)
            let prpList = try device.allocateDMA(size: NVMeController.pageSize)
            buffers.append(prpList)
            bounce = NVMeController.BounceBuffer(data: data, prpList: prpList)
            let kept = kept
            let fresh = !inherited
            func queue(_ index: Int, entries: Int) throws -> NVMeQueuePair {
                let rings = layout.rings(index)
                let sizes = NVMeKeptLayout.ringBytes(entries)
                return try NVMeQueuePair(identifier: UInt16(index), entries: entries,
                                         submissions: try kept.slice(at: rings.submissions, size: sizes.submissions),
                                         completions: try kept.slice(at: rings.completions, size: sizes.completions),
                                         record: NVMeQueueRecord(try kept.slice(at: NVMeKeptLayout.recordOffset(index), size: NVMeQueueRecord.size)),
                                         fresh: fresh, registers: registers, doorbellStride: capabilities.doorbellStride, runtime: runtime)
            }
            admin = try queue(0, entries: layout.adminEntries)
            ioQueues = try (1...layout.ioQueues).map { try queue($0, entries: layout.ioEntries) }
        } catch {
            // A predecessor's memory stays mapped until the device closes: its controller may still use it.
            for buffer in buffers where buffer !== handed { buffer.free() }
            throw error
        }
    }

    /// Whether a controller started with `completion` and `ioQueueLimit` on `registers`' device
    /// can use this memory; marks it taken when it can.
    func take(completion: NVMeController.Completion, ioQueueLimit: Int?, capabilities: NVMeCapabilities) -> Bool {
        guard !taken, completion == self.completion, ioQueueLimit == self.ioQueueLimit,
              capabilities.rawValue == self.capabilities.rawValue else { return false }
        taken = true
        return true
    }

    /// Frees a predecessor's kept memory that was not reused, once the controller was reset.
    func freeRetired() {
        retired?.free()
        retired = nil
    }

    /// Frees the memory, unless a controller took it (which frees it when it stops). A
    /// predecessor's saved state in it is left alone: the predecessor may still be running
    /// (a standby that stops while it waits), and the next process may resume from it.
    public func free() {
        guard !taken else { return }
        taken = true
        release(clearing: !inherited)
    }

    /// Frees everything (the owner's way: the controller's stop, or ``free()``), the saved
    /// state cleared first when `clearing` (nothing is left to resume from). Idempotent.
    func release(clearing: Bool = true) {
        guard !released else { return }
        released = true
        if clearing { try? NVMeKeptHeader.clear(in: kept) }
        admin.free()
        for queue in ioQueues { queue.free() }
        kept.free()
        retired?.free()
        retired = nil
        bounce.data.free()
        bounce.prpList.free()
    }
}
