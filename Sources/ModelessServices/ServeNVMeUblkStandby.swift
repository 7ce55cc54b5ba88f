import ModelessBus
import ModelessDevice
import ModelessDrivers
import ModelessRuntime
import ModelessSystem
import ModelessUblk

#if canImport(Glibc)
import Glibc
#endif

/// What a warm standby of `serve nvme --ublk` does before its predecessor is gone
/// (docs/kernel-interfaces.md, "The stall per kill"): with the VFIO descriptors handed over it
/// adopts the device (its regions, BARs, interrupt counts, its own IOVA window), makes its
/// runtime, and maps the controller's queue memory and the ublk tags' buffers, so that after
/// the claim only what needs the predecessor gone remains: bus mastering off, the interrupts,
/// the controller's start and the ublk recovery.
extension NVMeServing {
    /// A standby's device, runtime and DMA memory, made while its predecessor serves. What is
    /// not taken by the takeover is released by ``release()`` (or with the device, which
    /// unmaps whatever is still mapped when it closes).
    final class StandbyPreparation {
        let device: VFIODevice
        let runtime: any DriverRuntime
        private var memory: NVMeQueueMemory?
        private var pools: [DMAPool]
        /// What was made and how long each part took, for the standby's waiting line.
        let summary: String

        init(device: VFIODevice, runtime: any DriverRuntime, memory: NVMeQueueMemory?, pools: [DMAPool], summary: String) {
            self.device = device
            self.runtime = runtime
            self.memory = memory
            self.pools = pools
            self.summary = summary
        }

        /// Whether the controller's queue memory made ahead is the predecessor's (kept memory
        /// handed over), from which the controller may resume without a reset.
        var holdsPredecessorsQueues: Bool { memory?.holdsPredecessorsQueues ?? false }

        /// The controller's queue memory, once (nil when it could not be made ahead).
        func takeMemory() -> NVMeQueueMemory? {
            defer { memory = nil }
            return memory
        }

        /// The ublk tags' pools, once (one per ublk queue of the recorded device).
        func takePools() -> [DMAPool] {
            defer { pools = [] }
            return pools
        }

        /// Frees what was not taken, shuts the runtime down and closes the device.
        func release() {
            takeMemory()?.free()
            for pool in takePools() { pool.buffer.free() }
            runtime.shutdown()
            device.close()
        }
    }

    /// Adopts the handed-over descriptors of `pci` ahead and makes the runtime and DMA memory
    /// (the ublk tags' buffers for the device `record` names). Nil when nothing was handed
    /// over or the descriptors could not be adopted (the device is then opened after the
    /// claim, as without a handover); `why` says which.
    func prepareStandby(_ pci: PCIAddress, record: String, why: inout String) -> StandbyPreparation? {
        let begun = monotonicNanoseconds()
        guard let device = VFIODevice.adoptAhead(pci) else {
            why = VFIOHandover.refusal(for: pci).map { "the handed-over descriptors were not adopted ahead (\($0))" } ?? "nothing handed over to adopt ahead"
            return nil
        }
        let adopted = monotonicNanoseconds()
        let runtime: any DriverRuntime
        do { runtime = try makeRuntime(mode) } catch {
            device.close()
            why = "no runtime could be made ahead (\(error))"
            return nil
        }
        let made = monotonicNanoseconds()
        var notes: [String] = []
        var memory: NVMeQueueMemory?
        do { memory = try NVMeQueueMemory(device: device, runtime: runtime, completion: irq) } catch {
            notes.append("no controller memory ahead: \(error)")
        }
        let mapped = monotonicNanoseconds()
        var pools: [DMAPool] = []
        if let shape = Self.recordedDevice(record).flatMap({ UblkExport.shape(deviceID: $0) }) {
            do throws(DeviceError) {
                for _ in 0..<shape.queues {
                    pools.append(try DMAPool(device: device, chunkSize: NVMeController.transferChunkSize(dataBytes: shape.ioBytes), count: shape.depth))
                }
            } catch {
                notes.append("no ublk buffers ahead: \(error.message)")
                for pool in pools { pool.buffer.free() }
                pools = []
            }
        }
        let done = monotonicNanoseconds()
        let summary = "adopted ahead in \(millisecondsText(adopted - begun)) ms (\(device.adoptionSteps)), runtime \(millisecondsText(made - adopted)) ms, "
            + "controller memory \(millisecondsText(mapped - made)) ms, \(pools.count) ublk queue buffer pool(s) \(millisecondsText(done - mapped)) ms"
            + (notes.isEmpty ? "" : "; " + notes.joined(separator: "; "))
        return StandbyPreparation(device: device, runtime: runtime, memory: memory, pools: pools, summary: summary)
    }

    /// Runs `body` with a standby's prepared device and runtime, taken over (`VFIODevice.takeOver(keepingBusMastering:)`),
    /// as ``withBoundDevice(_:mode:options:verifier:_:)`` does with a device it opens: the
    /// device's removal ends normally, any other failure is reported and ends with 1, and
    /// everything is released on every path.
    func withPreparedDevice(_ prepared: StandbyPreparation, _ body: (any DeviceAccess, any DriverRuntime) throws -> Void) throws {
        defer { prepared.release() }
        try endingAsDevicesDo { try body(prepared.device, prepared.runtime) }
    }
}
