import CLibURing
import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// How to export a device through ublk.
public struct UblkConfiguration: Sendable, Equatable {
    /// Queues: the kernel allows at most one per CPU (and uses fewer if there are fewer CPUs).
    public var queues: Int
    /// Requests each queue may have in flight (tags per queue), 1...4096.
    public var queueDepth: Int
    /// Ask for UBLK_F_USER_RECOVERY when the kernel offers it: a server that dies leaves the
    /// device waiting (requests queued) for a new server instead of failing it at once.
    public var userRecovery: Bool

    /// A configuration of `queues` queues (default one per CPU) of `queueDepth` tags each, with user
    /// recovery asked for unless `userRecovery` is false. ``validate()`` checks the values.
    public init(queues: Int = SystemThread.cpuCount, queueDepth: Int = 64, userRecovery: Bool = true) {
        self.queues = queues
        self.queueDepth = queueDepth
        self.userRecovery = userRecovery
    }

    /// Checks the values against the kernel's limits, before anything is created.
    public func validate() throws(UblkError) {
        guard (1...UblkInterface.maximumQueueDepth).contains(queueDepth) else {
            throw UblkError(.invalidArgument, "a queue depth of \(queueDepth) is outside the 1-\(UblkInterface.maximumQueueDepth) requests per queue the kernel's ublk driver accepts")
        }
        guard queues >= 1 else {
            throw UblkError(.invalidArgument, "\(queues) queues: a ublk device needs at least one")
        }
    }
}

/// A device exported to the kernel as `/dev/ublkbN`, served by this process until ``stop()``.
///
/// ``start(_:configuration:buffers:)`` runs ADD_DEV, opens `/dev/ublkcN`, SET_PARAMS, starts
/// one queue per CPU (each with its own thread and io_uring, every tag fetched) and START_DEV;
/// a failure at any step undoes the steps before it, so no device is left behind.
/// ``stop()`` runs STOP_DEV, ends the queues, closes `/dev/ublkcN` and runs DEL_DEV.
public final class UblkExport: @unchecked Sendable {
    /// The kernel's number for the device: `/dev/ublkbN`, `/dev/ublkcN`.
    public let deviceID: UInt32
    /// What the device presents.
    public let geometry: UblkGeometry
    /// Queues and their depth, as the kernel accepted them.
    public let queues: Int
    /// Tags (requests in flight) per queue, as the kernel accepted them.
    public let queueDepth: Int
    /// Feature flags the device runs with (as the kernel reported them after ADD_DEV).
    public let features: UblkFeatures
    private let control: UblkControl
    private let characterDevice: Int32
    private var queueObjects: [UblkQueue]
    private var stopped = false
    private let lock = ConditionLock()
    /// For a recovered device, how long each step of the recovery took.
    public private(set) var recoverySteps: UblkRecoverySteps?

    /// The block device the kernel's users open.
    public var blockDevicePath: String { UblkInterface.blockDevicePath(deviceID) }

    private init(deviceID: UInt32, geometry: UblkGeometry, queues: [UblkQueue], depth: Int, features: UblkFeatures,
                 control: UblkControl, characterDevice: Int32) {
        self.deviceID = deviceID
        self.geometry = geometry
        self.queues = queues.count
        self.queueDepth = depth
        self.features = features
        self.control = control
        self.characterDevice = characterDevice
        queueObjects = queues
    }

    /// Checks that the kernel's ublk driver is there and usable (opens `/dev/ublk-control`
    /// and closes it), so that a caller can refuse before preparing anything else.
    public static func checkDriver() throws(UblkError) {
        _ = try UblkControl()
    }

    /// Exports `backend`'s device. Returns once `/dev/ublkbN` exists and is being served.
    public static func start(
        _ backend: any UblkBackend, configuration: UblkConfiguration, buffers: any UblkBufferProvider = PageBufferProvider()
    ) throws(UblkError) -> UblkExport {
        try configuration.validate()
        let control = try UblkControl()
        let offered = control.features()
        var wanted: UblkFeatures = [.ioctlEncode]
        if configuration.userRecovery && offered.contains(.userRecovery) {
            wanted.insert(.userRecovery)
            // Requests the dead server had taken are sent again to the next one.
            if offered.contains(.userRecoveryReissue) { wanted.insert(.userRecoveryReissue) }
        }
        let geometry = try backend.geometry
        let info: ublksrv_ctrl_dev_info
        do {
            info = try control.addDevice(
                queues: configuration.queues, depth: configuration.queueDepth, maximumIOBytes: backend.maximumIOBytes, features: wanted)
        } catch {
            throw refusal(error, configuration)
        }
        let id = info.dev_id
        // From here on, every failure deletes the device again.
        var characterDevice: Int32 = -1
        var queues: [UblkQueue] = []
        func undo() {
            for queue in queues { queue.close() }
            if characterDevice >= 0 { Glibc.close(characterDevice) }
            try? control.delete(device: id)
        }
        do throws(UblkError) {
            characterDevice = try openCharacterDevice(id)
            var parameters = makeParameters(geometry, maximumIOBytes: Int(info.max_io_buf_bytes))
            do { try control.setParameters(&parameters, device: id) } catch {
                throw UblkError(.kernelRefused, "the kernel refused the device's parameters (\(geometry.blockCount) blocks of \(geometry.blockSize) bytes): \(error)")
            }
            let cpus = SystemThread.cpuCount
            for index in 0..<Int(info.nr_hw_queues) {
                let queue = try UblkQueue(
                    index: index, depth: Int(info.queue_depth), deviceID: id, characterDevice: characterDevice,
                    ioBytes: Int(info.max_io_buf_bytes), backend: backend, buffers: buffers)
                queues.append(queue)
                try queue.launch(cpu: index < cpus ? index : nil)
            }
            // The queues' threads set up their rings and fetch their tags at once.
            for queue in queues { try queue.waitUntilFetching() }
            do { try control.start(device: id, serverProcess: getpid()) } catch {
                throw UblkError(.kernelRefused, "the kernel refused to start \(UblkInterface.blockDevicePath(id)): \(error)")
            }
        } catch {
            undo()
            throw error
        }
        return UblkExport(
            deviceID: id, geometry: geometry, queues: queues, depth: Int(info.queue_depth), features: UblkFeatures(rawValue: info.flags),
            control: control, characterDevice: characterDevice)
    }

    /// How long a recovery waits, once the device is quiesced, before START_USER_RECOVERY:
    /// long enough for the kernel's quiesce work to finish cancelling the dead server's
    /// commands (see ``recover(deviceID:_:buffers:timeout:beforeEnding:)``).
    public static let quiesceGrace: Duration = .milliseconds(10)

    /// Takes over device `deviceID`, left by a server that died with user recovery on: waits
    /// (up to `timeout`) until the kernel has quiesced it and released the dead server's
    /// `/dev/ublkcN` (START_USER_RECOVERY answers EBUSY until then), opens it, starts the
    /// queues with every tag fetched, and ends the recovery with this process as the server,
    /// so that the requests that waited, and with UBLK_F_USER_RECOVERY_REISSUE those the dead
    /// server had taken, are served. `/dev/ublkbN` stays the same block device throughout.
    /// Fails with ``UblkError/Kind/noSuchDevice`` when there is no such device or it cannot be
    /// recovered (no user recovery, or another geometry than `backend`'s).
    ///
    /// `beforeEnding` runs once the queues fetch, before END_USER_RECOVERY lets requests in:
    /// where a server whose backend is still starting (a controller resuming on another
    /// thread) waits for it, so that the recovery's own steps run meanwhile. When it throws,
    /// or the backend then has no geometry, the recovery is not ended (the device stays
    /// quiesced for the next server) and the error, as ``UblkError/Kind/system`` unless it is
    /// a ``UblkError``, is thrown.
    public static func recover(
        deviceID: UInt32, _ backend: any UblkBackend, buffers: any UblkBufferProvider = PageBufferProvider(),
        timeout: Duration = .seconds(30), beforeEnding: () throws -> Void = {}
    ) throws(UblkError) -> UblkExport {
        let control = try UblkControl()
        let path = UblkInterface.blockDevicePath(deviceID)
        let info: ublksrv_ctrl_dev_info
        do { info = try control.deviceInfo(device: deviceID) } catch {
            throw UblkError(.noSuchDevice, "ublk device \(deviceID) cannot be recovered: \(error)")
        }
        let features = UblkFeatures(rawValue: info.flags)
        guard features.contains(.userRecovery) else {
            throw UblkError(.noSuchDevice, "ublk device \(deviceID) was added without user recovery: it cannot be taken over")
        }
        guard Int(info.max_io_buf_bytes) <= backend.maximumIOBytes else {
            throw UblkError(.noSuchDevice, "ublk device \(deviceID) takes requests of \(info.max_io_buf_bytes) bytes, more than this server's \(backend.maximumIOBytes)")
        }
        let began = monotonicNanoseconds()
        var steps = UblkRecoverySteps()
        let deadline = monotonicNanoseconds() + timeout.wholeNanoseconds
        // First the device quiesced, then a grace before START_USER_RECOVERY: Linux 6.12's
        // quiesce work sets the state, releases the device's lock and only then cancels the
        // dead server's commands, walking every tag; a START (which clears the tags) and
        // FETCH landing in that walk had it complete a NULL command (a kernel oops seen in
        // the VM bench, about one kill in 30, once starts came quickly; the device then
        // stays busy for good).
        var state = UblkDeviceState(rawValue: info.state)
        while state != .quiesced {
            guard monotonicNanoseconds() < deadline else {
                throw UblkError(.kernelRefused, "\(path) was not quiesced within \(timeout) of its server's end (state \(state.map { "\($0)" } ?? "unknown"))")
            }
            usleep(1_000)
            state = (try? control.deviceInfo(device: deviceID)).flatMap { UblkDeviceState(rawValue: $0.state) }
        }
        steps.quiesced = monotonicNanoseconds() - began
        usleep(UInt32(quiesceGrace.wholeNanoseconds / 1_000))
        while true {
            do {
                try control.startRecovery(device: deviceID)
                steps.started = monotonicNanoseconds() - began
                break
            } catch {
                steps.busyAnswers += 1
                guard error.errno == .resourceBusy, monotonicNanoseconds() < deadline else {
                    let state = (try? control.deviceInfo(device: deviceID)).flatMap { UblkDeviceState(rawValue: $0.state) }
                    throw UblkError(.kernelRefused, "the kernel refused to start recovering \(path) (state \(state.map { "\($0)" } ?? "unknown")): \(error)")
                }
                usleep(1_000)
            }
        }
        var characterDevice: Int32 = -1
        var queues: [UblkQueue] = []
        let geometry: UblkGeometry
        do throws(UblkError) {
            characterDevice = try openCharacterDevice(deviceID, busyUntil: deadline)
            let cpus = SystemThread.cpuCount
            for index in 0..<Int(info.nr_hw_queues) {
                let preparing = monotonicNanoseconds()
                let queue = try UblkQueue(
                    index: index, depth: Int(info.queue_depth), deviceID: deviceID, characterDevice: characterDevice,
                    ioBytes: Int(info.max_io_buf_bytes), backend: backend, buffers: buffers)
                steps.preparingQueues += monotonicNanoseconds() - preparing
                queues.append(queue)
                try queue.launch(cpu: index < cpus ? index : nil)
            }
            for queue in queues { try queue.waitUntilFetching() }
            steps.queuesFetched = monotonicNanoseconds() - began
            do { try beforeEnding() } catch let error as UblkError { throw error } catch {
                throw UblkError(.system, "\(error)")
            }
            geometry = try backend.geometry
            steps.backendReady = monotonicNanoseconds() - began
            do { try control.endRecovery(device: deviceID, serverProcess: getpid()) } catch {
                throw UblkError(.kernelRefused, "the kernel refused to end recovering \(path): \(error)")
            }
            steps.ended = monotonicNanoseconds() - began
        } catch {
            // The device stays quiesced, its requests waiting, for the next attempt.
            for queue in queues { queue.close() }
            if characterDevice >= 0 { Glibc.close(characterDevice) }
            throw error
        }
        let export = UblkExport(
            deviceID: deviceID, geometry: geometry, queues: queues, depth: Int(info.queue_depth), features: features,
            control: control, characterDevice: characterDevice)
        export.recoverySteps = steps
        return export
    }

    /// The queues, depth and largest request of device `deviceID`, or nil when there is no
    /// such device: what a server that will recover it needs for its tags' buffers.
    public static func shape(deviceID: UInt32) -> (queues: Int, depth: Int, ioBytes: Int)? {
        guard let control = try? UblkControl(), let info = try? control.deviceInfo(device: deviceID) else { return nil }
        return (Int(info.nr_hw_queues), Int(info.queue_depth), Int(info.max_io_buf_bytes))
    }

    /// The state of device `deviceID`, or nil when there is no such device.
    public static func state(deviceID: UInt32) throws(UblkError) -> UblkDeviceState? {
        let control = try UblkControl()
        guard let info = try? control.deviceInfo(device: deviceID) else { return nil }
        return UblkDeviceState(rawValue: info.state)
    }

    /// Removes the block device and deletes the ublk device. Idempotent.
    public func stop() throws(UblkError) {
        let queues = lock.withLock { () -> [UblkQueue] in
            if stopped { return [] }
            stopped = true
            return queueObjects
        }
        guard !queues.isEmpty else { return }
        var failure: UblkError?
        do { try control.stop(device: deviceID) } catch {
            failure = UblkError(.kernelRefused, "stopping \(blockDevicePath): \(error)")
        }
        for queue in queues { queue.close() }
        Glibc.close(characterDevice)
        do { try control.delete(device: deviceID) } catch {
            failure = failure ?? UblkError(.kernelRefused, "deleting ublk device \(deviceID): \(error)")
        }
        if let failure { throw failure }
    }

    /// Requests that failed so far (summed over queues), and the last one's description.
    public var failedRequests: (count: Int, last: String?) {
        lock.withLock { queueObjects }.reduce((0, nil)) { total, queue in
            let summary = queue.failureSummary
            return (total.0 + summary.count, summary.last ?? total.1)
        }
    }

    // MARK: Steps

    /// Opens `/dev/ublkcN`, waiting briefly for the node to appear (devtmpfs or udev makes it).
    /// With `busyUntil`, also waits while it is busy (still held by a dead server's files).
    private static func openCharacterDevice(_ id: UInt32, busyUntil: UInt64? = nil) throws(UblkError) -> Int32 {
        let path = UblkInterface.characterDevicePath(id)
        let deadline = busyUntil ?? monotonicNanoseconds() + 5_000_000_000
        while true {
            let fd = open(path, O_RDWR | O_CLOEXEC)
            if fd >= 0 { return fd }
            let error = Errno.current
            let retry = error == .noSuchFileOrDirectory || (busyUntil != nil && error == .resourceBusy)
            guard retry, monotonicNanoseconds() < deadline else {
                throw UblkError(.system, "cannot open \(path): \(error)")
            }
            usleep(10_000)
        }
    }

    /// The basic parameters (and, if the device zeroes or discards ranges, the discard ones).
    static func makeParameters(_ geometry: UblkGeometry, maximumIOBytes: Int) -> ublk_params {
        var parameters = ublk_params()
        var types: UblkParameterTypes = [.basic]
        let shift = UInt8(geometry.blockSize.trailingZeroBitCount)
        parameters.basic.attrs = (geometry.flushes ? UblkAttributes.volatileCache : []).rawValue
        parameters.basic.logical_bs_shift = shift
        parameters.basic.physical_bs_shift = shift
        parameters.basic.io_min_shift = shift
        parameters.basic.io_opt_shift = shift
        parameters.basic.max_sectors = UInt32(maximumIOBytes / 512)
        parameters.basic.dev_sectors = geometry.sectors
        if geometry.writesZeroes || geometry.discards {
            types.insert(.discard)
            parameters.discard.discard_granularity = UInt32(geometry.blockSize)
            parameters.discard.max_discard_segments = 1
            parameters.discard.max_discard_sectors = geometry.discards ? UInt32(maximumIOBytes / 512) : 0
            parameters.discard.max_write_zeroes_sectors = geometry.writesZeroes ? UInt32(maximumIOBytes / 512) : 0
        }
        parameters.types = types.rawValue
        return parameters
    }

    /// ADD_DEV's refusal in the caller's terms.
    private static func refusal(_ error: SystemError, _ configuration: UblkConfiguration) -> UblkError {
        switch error.errno {
        case .invalidArgument:
            UblkError(.invalidArgument, "the kernel refused a ublk device with \(configuration.queues) queue(s) of depth \(configuration.queueDepth): \(error)")
        case .permissionDenied, .notPermitted:
            UblkError(.notPermitted, "the kernel refused to add a ublk device (\(error)): exporting through ublk needs root (CAP_SYS_ADMIN)")
        default:
            UblkError(.kernelRefused, "the kernel refused to add a ublk device: \(error)")
        }
    }
}
