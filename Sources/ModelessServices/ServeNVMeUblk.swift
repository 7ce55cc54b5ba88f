import FoundationEssentials
import ModelessBus
import ModelessDevice
import ModelessDrivers
import ModelessRuntime
import ModelessSystem
import ModelessUblk

#if canImport(Glibc)
import Glibc
#endif

/// `modeless serve nvme ADDR --ublk`: the NVMe driver serves the kernel directly, as
/// `/dev/ublkbN`, with the driver's DMA buffers as ublk's per-tag buffers (see
/// docs/kernel-interfaces.md).
///
/// The controller is claimed in the export directory (`…/exports/nvme+ADDR.lock`, recording
/// the ublk device); a process started while a previous one holds the claim is refused. One
/// that finds the claim free but recorded (its predecessor was killed) recovers that ublk
/// device instead of adding one: the block device, and a file system mounted on it, stay.
extension NVMeServing {
    /// The ublk options of `serve nvme`.
    struct UblkOptions {
        /// Queues; nil for one per CPU.
        var queues: Int?
        var queueDepth: Int?
        var recovery: Bool
    }

    func runUblk(_ requested: UblkOptions) throws {
        var entered = monotonicNanoseconds()
        // A warm standby (`MODELESS_STANDBY=1`, from a supervisor with `"standby": true`)
        // waits for the claim with the termination signals still deliverable: it holds nothing.
        let standby = getenv("MODELESS_STANDBY").map { String(cString: $0) == "1" } ?? false
        if !standby { TerminationSignals.block() }
        var ublkOptions = requested
        let queues = requested.queues ?? SystemThread.cpuCount
        ublkOptions.queues = queues
        guard let address else {
            printError("--ublk serves a controller bound to vfio-pci: name it (ADDR), not --model")
            throw HostExit(64)
        }
        guard irq != .poll else {
            printError("--ublk needs completion interrupts (the driver's DPC hands results to the ublk queues): use --irq msix, msi or intx")
            throw HostExit(64)
        }
        let claim: ExportLock
        let pci: PCIAddress
        var prepared: StandbyPreparation?
        do {
            if queues < 1 { throw UblkError(.invalidArgument, "\(queues) queues: a ublk device needs at least one") }
            try UblkExport.checkDriver()
            do { pci = try PCIBus().resolve(try DeviceSelector(parsing: address)).address } catch { throw fail(error) }
            if standby {
                let record = ExportLock.record(of: "nvme+\(pci)")
                let reserved = Self.reserveBuffers(for: record)
                let handover = Self.receiveHandover(pci)
                var why = ""
                prepared = prepareStandby(pci, record: record, why: &why)
                printLine("standby for \(pci): waiting for the serving process to end (\(reserved / 1_048_576) MiB of DMA memory faulted in ahead; \(handover); "
                          + "\(prepared?.summary ?? why); pid \(getpid()))")
                claim = try ExportLock(waitingFor: "nvme+\(pci)", what: "NVMe controller \(pci)")
                TerminationSignals.block()
                let claimed = monotonicNanoseconds()
                // With the device adopted ahead, nothing waits for the predecessor's end: the
                // claim is released as its descriptors close, after its last thread stopped
                // running, and the ublk recovery waits for the kernel by itself.
                if prepared == nil { _ = claim.waitForPreviousProcess(seconds: 10) }
                let gone = monotonicNanoseconds()
                // The kernel may release the dead process's VFIO group a moment after the process
                // ended; with the descriptors handed over, the group never closed.
                let group = prepared != nil || VFIOHandover.isOffered(pci) ? "not waited for (held)"
                    : VFIOGroupRelease.wait(for: pci, seconds: 10).map { millisecondsText($0) + " ms" } ?? "still busy after 10 s"
                printLine("standby for \(pci): claimed at monotonic \(millisecondsText(claimed)) ms, "
                          + "the previous process \(prepared == nil ? "gone \(millisecondsText(gone - claimed)) ms later" : "not waited for (the device adopted ahead)"), "
                          + "its VFIO group free \(group) after that")
                entered = monotonicNanoseconds()
            } else {
                claim = try ExportLock(claim: "nvme+\(pci)", what: "NVMe controller \(pci)")
            }
        } catch let error as UblkError {
            prepared?.release()
            printError(error.message)
            throw HostExit(LogicalExport.exitCode(error.kind))
        } catch {
            prepared?.release()
            throw error
        }
        // The record (the ublk device) is emptied only by a clean stop, below: a server that
        // fails to come up leaves it for the next attempt, which recovers the device.
        defer { claim.release(keepingRecord: true) }
        if let ahead = prepared {
            // With the predecessor's queues in kept memory, the controller may go on running
            // them: bus mastering stays on for the driver's resumption (which turns it off
            // itself when it resets the controller instead).
            do { try ahead.device.takeOver(keepingBusMastering: ahead.holdsPredecessorsQueues) } catch {
                printError("the VFIO device of \(pci) adopted ahead could not be taken over (\(error.message)); opening it anew")
                ahead.release()
                prepared = nil
                _ = VFIOGroupRelease.wait(for: pci, seconds: 10)
            }
        }
        let serve = { (access: any DeviceAccess, runtime: any DriverRuntime) throws in
            let opened = monotonicNanoseconds()
            if let refusal = VFIOHandover.refusal(for: pci) {
                printError("the handed-over VFIO descriptors of \(pci) were not adopted (\(refusal)); the device was opened anew")
            }
            let memory = prepared?.takeMemory()
            let irq = self.irq
            // A standby recovering a ublk device resumes (or starts) the controller on a
            // thread of its own while the ublk queues are made: the recovery ends once both are done.
            let start = prepared != nil && Self.recoverableDevice(claim.previousRecord) != nil
                ? try NVMeControllerStart {
                    try NVMeController(device: access, runtime: runtime, completion: irq, memory: memory)
                }
                : NVMeControllerStart(started: try NVMeController(device: access, runtime: runtime, completion: irq, memory: memory))
            defer {
                (try? start.wait())?.stop()
                start.join()
            }
            let export = try self.startOrRecover(start: start, device: access, claim: claim, pci: pci, ublkOptions, pools: prepared?.takePools() ?? [],
                                                 entered: entered, opened: opened)
            claim.record("ublk \(export.deviceID) as \(export.blockDevicePath) by process \(getpid())")
            self.releasePredecessorMappings(access)
            // Only now: a standby adopting ahead maps its own DMA where this process's
            // predecessor's mappings were, which are gone from here on.
            let handover = self.serveHandover(access, pci)
            defer { handover?.stop() }
            TerminationSignals.wait()
            var status: Int32 = 0
            do { try export.stop() } catch {
                printError("\(error)")
                status = 1
            }
            claim.record("")
            let failed = export.failedRequests
            printLine("stopped \(export.blockDevicePath); \(failed.count) request(s) failed\(failed.last.map { " (last: \($0))" } ?? "")")
            if status != 0 { throw HostExit(status) }
        }
        if let prepared {
            try withPreparedDevice(prepared, serve)
        } else {
            try withBoundDevice(pci.description, mode: mode) { _, access, runtime in try serve(access, runtime) }
        }
    }

    /// Recovers the ublk device the claim's previous holder recorded, if it is still there;
    /// otherwise adds one. Prints the `serving` line a supervisor waits for.
    /// A recovery's line says how long each step took: from entering this command (its
    /// CLOCK_MONOTONIC time is printed too, so that whoever killed the predecessor can time
    /// the process's start) to the controller being up, and the ublk recovery itself, which
    /// runs beside the controller's start when `start` is still under way (it ends the
    /// recovery only once the controller is up).
    /// `pools` (made ahead by a standby) become the tags' buffers where they fit; the rest are freed.
    private func startOrRecover(start: NVMeControllerStart, device: any DeviceAccess, claim: ExportLock, pci: PCIAddress, _ ublkOptions: UblkOptions,
                                pools: [DMAPool], entered: UInt64, opened: UInt64) throws -> UblkExport {
        do {
            let began = monotonicNanoseconds()
            if let previous = Self.recoverableDevice(claim.previousRecord), let state = try UblkExport.state(deviceID: previous),
               state != .dead, let shape = UblkExport.shape(deviceID: previous) {
                let backend = NVMeUblkBackend(device: device, starting: start, namespace: nil, maximumIOBytes: shape.ioBytes, pools: pools)
                defer { backend.releaseUnusedPools() }
                let export = try UblkExport.recover(deviceID: previous, backend, buffers: backend) {
                    // The controller, then what the requests are served with (its namespace).
                    _ = try backend.resolve().get()
                }
                let controller = try start.wait()
                let namespace = try backend.namespace.get()
                let done = monotonicNanoseconds()
                printLine("serving \(pci) namespace \(namespace.identifier) as \(export.blockDevicePath), recovered from state \(state) "
                          + "in \(millisecondsText(done - began)) ms, beside the controller's start, up in \(millisecondsText(start.endedAt - opened)) ms "
                          + "(\(Self.deviceTiming(controller.device, entered: entered, opened: opened)); entered at monotonic \(millisecondsText(entered)) ms; "
                          + "controller steps: \(controller.startSteps); "
                          + "\(controller.resumption.map { "saved state: \($0); " } ?? "")"
                          + "\(export.queues) queue(s) of depth \(export.queueDepth), features \(export.features); "
                          + "\(export.recoverySteps.map { "recovery steps: \($0); " } ?? "")pid \(getpid()))")
                return export
            }
            let controller = try start.wait()
            let backend: NVMeUblkBackend
            do { backend = try NVMeUblkBackend(controller: controller, namespace: nil, pools: pools) } catch {
                for pool in pools { pool.buffer.free() }
                throw error
            }
            defer { backend.releaseUnusedPools() }
            let namespace = try backend.namespace.get()
            // Every tag of every queue in flight at once: they share the controller's I/O queue.
            let entries = controller.queueEntries - 1
            let queues = ublkOptions.queues ?? SystemThread.cpuCount
            let most = entries / queues
            guard most >= 1 else {
                throw UblkError(.invalidArgument, "the controller's I/O queue holds \(entries) commands, fewer than \(queues) queues need: use --ublk-queues \(entries) or fewer")
            }
            let depth = ublkOptions.queueDepth ?? min(Self.defaultQueueDepth, most)
            guard depth >= 1, depth <= most else {
                throw UblkError(.invalidArgument, "a queue depth of \(depth) is more than the controller can give: its I/O queue holds \(entries) commands in flight, "
                                + "\(most) for each of \(queues) queue(s); use --queue-depth 1-\(most) (or fewer --ublk-queues)")
            }
            let configuration = UblkConfiguration(queues: queues, queueDepth: depth, userRecovery: ublkOptions.recovery)
            let export = try UblkExport.start(backend, configuration: configuration, buffers: backend)
            let geometry = export.geometry
            printLine("serving \(pci) namespace \(namespace.identifier) as \(export.blockDevicePath) (\(geometry.blockCount) blocks of \(geometry.blockSize) bytes, "
                      + "\(export.queues) queue(s) of depth \(export.queueDepth), flush \(geometry.flushes ? "yes" : "no"), discard \(geometry.discards ? "yes" : "no"), "
                      + "write-zeroes \(geometry.writesZeroes ? "yes" : "no"), requests up to \(backend.maximumIOBytes) bytes, features \(export.features); pid \(getpid()))")
            return export
        } catch let error as UblkError {
            printError(error.message)
            throw HostExit(LogicalExport.exitCode(error.kind))
        }
    }

    /// Faults in the memory of the ublk tags' DMA buffers of the device `record` names (and
    /// 4 MiB for the controller's queues), so that a standby's recovery maps them without
    /// faulting them in; the bytes reserved (0 when nothing is recorded or the memory is short).
    static func reserveBuffers(for record: String) -> Int {
        guard let device = recordedDevice(record), let shape = UblkExport.shape(deviceID: device) else { return 0 }
        let bytes = shape.queues * shape.depth * NVMeController.transferChunkSize(dataBytes: shape.ioBytes) + 4 << 20
        return DMAMemoryReserve.fill(bytes: bytes) ? DMAMemoryReserve.available : 0
    }

    /// Requests in flight per ublk queue unless `--queue-depth` says otherwise (fewer when the
    /// controller's I/O queue holds fewer): ublksrv's default. Deeper queues gain nothing at
    /// the depths block workloads reach here, and cost a recovery one fetch per tag and the
    /// DMA memory of each tag (132 KiB).
    static let defaultQueueDepth = 128

    /// The ublk device number in a claim's record, when that device is still there to recover.
    static func recoverableDevice(_ record: String) -> UInt32? {
        guard let device = recordedDevice(record), let state = try? UblkExport.state(deviceID: device), state != .dead else { return nil }
        return device
    }

    /// The ublk device number in a claim's record (`ublk N as ...`), if any.
    static func recordedDevice(_ record: String) -> UInt32? {
        let words = record.split(separator: " ")
        guard words.count >= 2, words[0] == "ublk" else { return nil }
        return UInt32(words[1])
    }
}
