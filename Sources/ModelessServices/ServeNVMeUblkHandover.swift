import ModelessBus
import ModelessDevice
import ModelessSystem
import ModelessUblk

#if canImport(Glibc)
import Glibc
#endif

/// The VFIO handover of `serve nvme --ublk` (docs/kernel-interfaces.md): the serving process
/// hands copies of its VFIO descriptors to its warm standby, which holds them while it waits,
/// so that the controller stays open across the serving process's death and the standby adopts
/// it instead of opening it anew.
extension NVMeServing {
    /// The handover socket of controller `pci`, beside its claim (`…/exports/nvme+ADDR.handover`).
    static func handoverPath(_ pci: PCIAddress) -> String {
        ExportLock.directory(for: .standard) + "/nvme+\(pci).handover"
    }

    /// How long a standby tries to reach a serving process's handover socket that is not
    /// (yet) listening: 2 s.
    static let handoverPatience: UInt64 = 2_000_000_000

    /// A standby's side: receives the serving process's descriptors of `pci` and keeps them
    /// for the device open to adopt. Returns what to print: how it went, or why the device
    /// will be opened anew (no serving process listening, a mismatch, an older server).
    static func receiveHandover(_ pci: PCIAddress) -> String {
        guard let group = try? PCIBus().device(at: pci).iommuGroup else {
            return "no VFIO handover (\(pci) has no IOMMU group): the device will be opened anew"
        }
        let path = handoverPath(pci)
        // The serving process offers its descriptors only once it serves and has released its
        // own predecessor's mappings: a standby started just before that finds no socket, or
        // the dead predecessor's, and tries again for a while.
        let deadline = monotonicNanoseconds() + handoverPatience
        while true {
            do {
                let descriptors = try VFIOHandover.receive(from: path, address: pci, group: group)
                VFIOHandover.offer(descriptors)
                return "VFIO descriptors of group \(group) handed over and held"
            } catch {
                let errno = error.systemError?.errno.rawValue
                if errno == ECONNREFUSED || errno == ENOENT, monotonicNanoseconds() < deadline {
                    usleep(20_000)
                    continue
                }
                return "no VFIO handover from \(path) (\(error.message)): the device will be opened anew"
            }
        }
    }

    /// A serving process's side: hands the descriptors of `access` (when it is a VFIO device)
    /// to every standby that asks, until the returned server is stopped; nil, with the reason
    /// printed, when it cannot (the service goes on without a handover).
    func serveHandover(_ access: any DeviceAccess, _ pci: PCIAddress) -> VFIOHandoverServer? {
        guard let device = access as? VFIODevice else { return nil }
        do {
            return try VFIOHandoverServer(device: device, path: Self.handoverPath(pci))
        } catch {
            printError("no VFIO handover for a standby: \(error.message)")
            return nil
        }
    }

    /// Once an adopted device serves: removes the IOMMU mappings of the dead predecessor's DMA
    /// memory (it was left mapped while the standby took over, so that unmapping it, which
    /// locks the container, held up nothing) and says how long that took.
    func releasePredecessorMappings(_ access: any DeviceAccess) {
        guard let device = access as? VFIODevice else { return }
        do {
            if let took = try device.releasePredecessorMappings() {
                printLine("released the previous process's DMA mappings in \(millisecondsText(took)) ms")
            }
        } catch {
            printError("could not release the previous process's DMA mappings: \(error.message) (they go when the device is closed)")
        }
    }

    /// How the device was taken for a recovery line: `the device adopted in X ms (the VFIO
    /// device ready at Y ms: its steps, the runtime after it)`, or `opened` for a device
    /// opened anew; times from `entered` (the command's start, or the standby's claim).
    static func deviceTiming(_ access: any DeviceAccess, entered: UInt64, opened: UInt64) -> String {
        guard let device = access as? VFIODevice else { return "the device open in \(millisecondsText(opened - entered)) ms" }
        var text = "the device \(device.adopted ? "adopted" : "opened") in \(millisecondsText(opened - entered)) ms"
            + (device.keptHandedInterrupts ? ", its interrupts on the eventfds handed over" : "")
        if device.readyAt > entered, device.readyAt <= opened {
            text += " (the VFIO device ready at \(millisecondsText(device.readyAt - entered)) ms"
                + (device.adoptionSteps.isEmpty ? "" : ": " + device.adoptionSteps) + ", the runtime after it)"
        }
        return text
    }
}
