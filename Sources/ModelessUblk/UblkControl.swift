import CLibURing
import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// The ublk control device, `/dev/ublk-control`: adds, configures, starts, stops and deletes
/// ublk devices. Each command is an io_uring command with a 32-byte `ublksrv_ctrl_cmd`
/// payload (so the ring has 128-byte entries), answered by one completion.
final class UblkControl {
    private let fd: Int32
    private let ring: IORing

    /// Opens the control device. A missing device means the kernel's ublk driver is not loaded.
    init() throws(UblkError) {
        let descriptor = open(UblkInterface.controlPath, O_RDWR | O_CLOEXEC)
        if descriptor < 0 {
            let error = Errno.current
            switch error {
            case .noSuchFileOrDirectory, .noSuchAddressOrDevice, .operationNotSupportedByDevice:
                throw UblkError(
                    .driverUnavailable,
                    "\(UblkInterface.controlPath) is missing: the kernel's ublk driver is not loaded; load it with `modprobe ublk_drv` (Linux 6.0 or later built with CONFIG_BLK_DEV_UBLK)")
            case .permissionDenied, .notPermitted:
                throw UblkError(.notPermitted, "cannot open \(UblkInterface.controlPath) (\(error)): exporting through ublk needs root (CAP_SYS_ADMIN)")
            default:
                throw UblkError(.system, "cannot open \(UblkInterface.controlPath): \(error)")
            }
        }
        fd = descriptor
        do {
            ring = try IORing(entries: 4, bigEntries: true, what: "the ublk control ring")
        } catch {
            Glibc.close(descriptor)
            throw UblkError(.system, "\(error)")
        }
    }

    deinit {
        ring.close()
        Glibc.close(fd)
    }

    /// Sends one control command and returns its non-negative result; a negative one is thrown.
    @discardableResult
    func send(
        _ command: UblkControlCommand, device: UInt32, buffer: UnsafeMutableRawBufferPointer? = nil, data: UInt64 = 0
    ) throws(SystemError) -> Int32 {
        var header = ublksrv_ctrl_cmd()
        header.dev_id = device
        header.queue_id = UblkInterface.noQueue
        header.len = UInt16(buffer?.count ?? 0)
        header.addr = UInt64(UInt(bitPattern: buffer?.baseAddress))
        header.data.0 = data
        try ring.queueCommand(fd: fd, operation: command.encoded, command: header, userData: UInt64(command.rawValue))
        try ring.submit(waitingFor: 1)
        let completion = try ring.waitCompletion()
        guard completion.result >= 0 else {
            throw SystemError(command.name, device == UblkInterface.anyDevice ? "a new ublk device" : "ublk device \(device)",
                              errno: Errno(rawValue: -completion.result))
        }
        return completion.result
    }

    /// What the running kernel supports (GET_FEATURES, Linux 6.5 and later); empty on older
    /// kernels, which do not know the command.
    func features() -> UblkFeatures {
        var value: UInt64 = 0
        let result = withUnsafeMutableBytes(of: &value) { bytes in
            Result { () throws(SystemError) in try send(.getFeatures, device: 0, buffer: bytes) }
        }
        guard case .success = result else { return [] }
        return UblkFeatures(rawValue: value)
    }

    /// Adds a device (ADD_DEV) and returns what the kernel made of the request: the device
    /// number it chose, the queues it allows (at most one per CPU), and the flags it kept.
    func addDevice(queues: Int, depth: Int, maximumIOBytes: Int, features: UblkFeatures) throws(SystemError) -> ublksrv_ctrl_dev_info {
        var info = ublksrv_ctrl_dev_info()
        info.nr_hw_queues = UInt16(queues)
        info.queue_depth = UInt16(depth)
        info.max_io_buf_bytes = UInt32(maximumIOBytes)
        info.dev_id = UblkInterface.anyDevice
        info.ublksrv_pid = getpid()
        info.flags = features.rawValue
        try withUnsafeMutableBytes(of: &info) { bytes throws(SystemError) in
            _ = try send(.addDevice, device: UblkInterface.anyDevice, buffer: bytes)
        }
        return info
    }

    /// Sets the block device's parameters (SET_PARAMS); only before START_DEV.
    func setParameters(_ parameters: inout ublk_params, device: UInt32) throws(SystemError) {
        parameters.len = UInt32(MemoryLayout<ublk_params>.size)
        try withUnsafeMutableBytes(of: &parameters) { bytes throws(SystemError) in
            _ = try send(.setParameters, device: device, buffer: bytes)
        }
    }

    /// Makes `/dev/ublkbN` appear (START_DEV). The kernel waits until every tag of every
    /// queue has a fetch outstanding, so the queues must be running first.
    func start(device: UInt32, serverProcess: pid_t) throws(SystemError) {
        try send(.startDevice, device: device, data: UInt64(serverProcess))
    }

    /// Removes `/dev/ublkbN` (STOP_DEV); the kernel ends the queues' outstanding fetches.
    func stop(device: UInt32) throws(SystemError) {
        try send(.stopDevice, device: device)
    }

    /// What the kernel holds about device `device` (GET_DEV_INFO): its queues, depth, flags,
    /// state and server.
    func deviceInfo(device: UInt32) throws(SystemError) -> ublksrv_ctrl_dev_info {
        var info = ublksrv_ctrl_dev_info()
        try withUnsafeMutableBytes(of: &info) { bytes throws(SystemError) in
            _ = try send(.getDeviceInfo, device: device, buffer: bytes)
        }
        return info
    }

    /// Begins taking over a device whose server died (START_USER_RECOVERY). The kernel answers
    /// EBUSY until the dead server's `/dev/ublkcN` is closed and the device quiesced.
    func startRecovery(device: UInt32) throws(SystemError) {
        try send(.startUserRecovery, device: device)
    }

    /// Ends the takeover (END_USER_RECOVERY): the kernel waits for every tag's fetch from the
    /// new server, makes it the device's server and lets the queued requests go.
    func endRecovery(device: UInt32, serverProcess: pid_t) throws(SystemError) {
        try send(.endUserRecovery, device: device, data: UInt64(serverProcess))
    }

    /// Deletes the device (DEL_DEV); the kernel waits until `/dev/ublkcN` is closed.
    func delete(device: UInt32) throws(SystemError) {
        try send(.deleteDevice, device: device)
    }
}
