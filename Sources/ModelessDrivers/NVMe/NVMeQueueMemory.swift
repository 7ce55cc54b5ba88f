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
    private var taken = false

    /// Allocates the memory a controller on `device` started with `completion` and
    /// `ioQueueLimit` uses. Fails as the controller's start would when the device does not
    /// answer as an NVMe controller; allocates nothing then.
    public convenience init(device: any DeviceAccess, runtime: any DriverRuntime, completion: NVMeController.Completion,
                            ioQueueLimit: Int? = nil) throws {
        let registers = try device.region(0)
        try self.init(device: device, registers: registers, capabilities: try NVMeController.probe(registers), runtime: runtime,
                      completion: completion, ioQueueLimit: ioQueueLimit)
    }

    /// Allocates the memory for a controller whose registers and capabilities were read
    /// already (the controller's own start, when nothing was made ahead). Allocates nothing
    /// when it fails.
    init(device: any DeviceAccess, registers: MMIORegion, capabilities: NVMeCapabilities, runtime: any DriverRuntime,
         completion: NVMeController.Completion, ioQueueLimit: Int?) throws {
        self.registers = registers
        self.capabilities = capabilities
        self.completion = completion
        self.ioQueueLimit = ioQueueLimit
        var buffers: [DMABuffer] = []
        do {
            let data = try device.allocateDMA(size: NVMeController.bounceBytes)
            buffers.append(data)
            let prpList = try device.allocateDMA(size: NVMeController.pageSize)
            buffers.append(prpList)
            bounce = NVMeController.BounceBuffer(data: data, prpList: prpList)
            let limit = capabilities.queueEntryLimit
            admin = try NVMeQueuePair(identifier: 0, entries: min(NVMeController.adminQueueEntries, limit), device: device, registers: registers,
                                      doorbellStride: capabilities.doorbellStride, runtime: runtime)
            buffers += [admin.submissions, admin.completions]
            var queues: [NVMeQueuePair] = []
            for index in 0..<NVMeController.wantedIOQueues(completion, ioQueueLimit) {
                let queue = try NVMeQueuePair(identifier: UInt16(index + 1), entries: min(NVMeController.maximumQueueEntries, limit),
                                              device: device, registers: registers,
                                              doorbellStride: capabilities.doorbellStride, runtime: runtime)
                buffers += [queue.submissions, queue.completions]
                queues.append(queue)
            }
            ioQueues = queues
        } catch {
            for buffer in buffers { buffer.free() }
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

    /// Frees the memory, unless a controller took it (which frees it when it stops).
    public func free() {
        guard !taken else { return }
        taken = true
        admin.free()
        for queue in ioQueues { queue.free() }
        bounce.data.free()
        bounce.prpList.free()
    }
}
