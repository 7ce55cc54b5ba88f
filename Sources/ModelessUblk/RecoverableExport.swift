import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// An export that a replacement process can take over: the ublk device a server exports is
/// recorded in its ``ExportLock`` (`ublk N as /dev/ublkbN by process P`); the lock ends with
/// the process however it ends, the record only with a clean stop. So a server killed while
/// exporting leaves the record, and the next process to claim the same device finds it and
/// recovers that ublk device (``UblkExport/recover(deviceID:_:buffers:timeout:beforeEnding:)``) instead of
/// adding one: `/dev/ublkbN`, and a file system mounted on it, stay.
public enum RecoverableExport {
    /// How the export came about.
    public enum Origin: Sendable, Equatable {
        /// A new ublk device was added.
        case added
        /// The recorded device, left in `state` by a server that died, was taken over.
        case recovered(from: UblkDeviceState)
    }

    /// The record for `export`, kept in its claim while it serves.
    public static func record(_ export: UblkExport) -> String {
        "ublk \(export.deviceID) as \(export.blockDevicePath) by process \(getpid())"
    }

    /// The ublk device number in a claim's record (`ublk N as ...`), if any.
    public static func recordedDevice(_ record: String) -> UInt32? {
        let words = record.split(separator: " ")
        guard words.count >= 2, words[0] == "ublk" else { return nil }
        return UInt32(words[1])
    }

    /// Recovers the ublk device recorded in `claim` (its previous holder died while exporting)
    /// if it is still there, was added with user recovery and presents `backend`'s geometry;
    /// otherwise adds a device with `configuration`. Records the device in `claim` either way.
    ///
    /// A recorded device that is there but cannot be taken over by this backend (another size
    /// or block size: the logical device was replaced meanwhile) is refused with
    /// ``UblkError/Kind/alreadyExported``, naming it, rather than left quiesced under a second
    /// device.
    public static func startOrRecover(
        _ backend: any UblkBackend, claim: ExportLock, configuration: UblkConfiguration,
        buffers: any UblkBufferProvider = PageBufferProvider(), timeout: Duration = .seconds(30)
    ) throws(UblkError) -> (UblkExport, Origin) {
        if let previous = recordedDevice(claim.previousRecord), let state = try UblkExport.state(deviceID: previous), state != .dead {
            if let mismatch = geometryMismatch(deviceID: previous, try backend.geometry) {
                throw UblkError(.alreadyExported, "\(UblkInterface.blockDevicePath(previous)), recorded for this export by a process that died, "
                                + "\(mismatch): it cannot be taken over; stop what uses it, then delete that ublk device (DEL_DEV, e.g. ublksrv's `ublk del -n \(previous)`)")
            }
            let export = try UblkExport.recover(deviceID: previous, backend, buffers: buffers, timeout: timeout)
            claim.record(record(export))
            return (export, .recovered(from: state))
        }
        try configuration.validate()
        let export = try UblkExport.start(backend, configuration: configuration, buffers: buffers)
        claim.record(record(export))
        return (export, .added)
    }

    /// The block layer's request timeout ``shortenRequestTimeout(of:)`` sets: how long at most a
    /// request the dead server had taken keeps the device from being quiesced for recovery.
    public static let requestTimeoutMilliseconds = 1000

    /// Sets `/sys/block/ublkbN/queue/io_timeout` to ``requestTimeoutMilliseconds`` (the
    /// kernel's default is 30 s).
    ///
    /// Why: when a server dies, the kernel notices it through the io_uring commands it cancels,
    /// the fetches waiting in the kernel. A queue whose every tag the server had taken (a
    /// synchronous backend working through a burst) has no such command, and the kernel's ublk
    /// driver (6.12) then notices the death only when one of those requests times out: its
    /// timeout handler sees the dying server and quiesces the device. Until then
    /// `START_USER_RECOVERY` answers EBUSY, so the block layer's 30 s timeout was the stall.
    /// While the server lives, the handler only restarts the timer, so a shorter timeout costs
    /// a timer per slow request and fails nothing.
    public static func shortenRequestTimeout(of export: UblkExport) throws(UblkError) {
        let path = "/sys/block/ublkb\(export.deviceID)/queue/io_timeout"
        do { try FileAccess.writeText(String(requestTimeoutMilliseconds), to: path) } catch {
            throw UblkError(.system, "cannot set the request timeout of \(export.blockDevicePath) (\(path)): \(error)")
        }
    }

    /// How device `deviceID`'s block device differs from `geometry` (read from sysfs), or nil
    /// when it matches or sysfs does not say.
    static func geometryMismatch(deviceID: UInt32, _ geometry: UblkGeometry) -> String? {
        let block = "/sys/block/ublkb\(deviceID)"
        func number(_ path: String) -> UInt64? { FileAccess.readTextIfPresent(block + path).flatMap { UInt64($0.trimmingBlanks()) } }
        if let sectors = number("/size"), sectors != geometry.sectors {
            return "has \(sectors) sectors of 512 bytes where the device now has \(geometry.sectors)"
        }
        if let blockSize = number("/queue/logical_block_size"), blockSize != UInt64(geometry.blockSize) {
            return "has blocks of \(blockSize) bytes where the device now has \(geometry.blockSize)"
        }
        return nil
    }
}
