import ModelessDevice

extension NVMeController {
    /// Why a request, or the controller, failed.
    public enum Failure: Error, DeviceRemovalReporting, Equatable, CustomStringConvertible {
        /// The probe found no answer at BAR 0 (CAP reads all-ones or the region cannot be reached).
        case notResponding(String)
        /// Something answers, but not as an NVMe controller (CAP and VS say what).
        case notAnNVMeController(String)
        case timedOut(String)
        /// CSTS.CFS: the controller needs a reset; every later request fails with this.
        case controllerFatal
        /// The controller stopped answering (CSTS reads all-ones, or its registers cannot be
        /// reached); every later request fails with this, and so did those in flight.
        case deviceLost(String)
        /// The controller was removed: the kernel asked for it back (an unbind, a hot-unplug).
        /// Commands in flight failed with this, and every later request fails with it.
        case removed(String)
        /// ``NVMeController/stop()`` was called.
        case stopped
        case commandFailed(String, statusType: UInt8, statusCode: UInt8)
        case badRequest(String)

        /// What failed, with the detail the case carries (the command and its status, the request
        /// refused and why).
        public var description: String {
            switch self {
            case .notResponding(let why): "device not responding: \(why)"
            case .notAnNVMeController(let why): "not an NVMe controller: \(why)"
            case .timedOut(let what): "timed out: \(what)"
            case .controllerFatal: "the controller reported a fatal status (CSTS.CFS); it must be restarted"
            case .deviceLost(let why): "the NVMe controller stopped answering (\(why)); restart the driver once it is back"
            case .removed(let why): why
            case .stopped: "the NVMe controller was stopped"
            case .commandFailed(let what, let type, let code): "\(what) failed: status type \(type), code 0x\(String(code, radix: 16))"
            case .badRequest(let what): what
            }
        }

        /// Whether the failure says the controller is gone (removed, or not answering).
        public var isDeviceRemoval: Bool {
            switch self {
            case .deviceLost, .removed, .notResponding: true
            default: false
            }
        }
    }

    /// Why the controller can no longer be used, if it cannot.
    public var failure: Failure? { failureState.withLock { $0 } }

    /// Throws ``failure`` if there is one; one atomic load otherwise.
    @inline(__always)
    func throwIfLost() throws(Failure) {
        if isLost.load(ordering: .acquiring), let failure = failureState.withLock({ $0 }) { throw failure }
    }

    /// Records the first failure that makes the controller unusable and fails everything in
    /// flight with it: waiters wake to it, tagged and closure commands complete with it (from
    /// the DPC, or the next poll). Later failures are ignored: the first is the one reported.
    /// Legal at any level, the ISR's included.
    func lose(_ failure: Failure) {
        let first = failureState.withLock { state -> Bool in
            guard state == nil else { return false }
            state = failure
            return true
        }
        guard first else { return }
        isLost.store(true, ordering: .releasing)
        failInFlight()
        // Found gone on the datapath: a surprise removal, handled as a requested one.
        if case .deviceLost(let why) = failure { device.removal?.report(.surprise(why)) }
    }

    /// Fails the commands in flight on both queues (after ``lose(_:)``; again after a
    /// submission that raced with it).
    func failInFlight() {
        var synchronous = admin.failAll().synchronous
        for (index, queue) in ioQueues.enumerated() {
            let found = queue.failAll()
            synchronous = synchronous || found.synchronous
            if found.ready, index < handOvers.count { handOvers[index].queue() }
        }
        if synchronous { completed.signal() }
    }

    /// Reads CSTS and the register region's health: a controller that reads all-ones or whose
    /// registers fault is lost, one with CSTS.CFS is fatal. Throws the failure, recorded once.
    func checkController() throws(Failure) {
        try throwIfLost()
        let status = NVMeStatusRegister(rawValue: registers.load(NVMeRegister.status))
        if registers.health.faultCount > 0 {
            let fault = registers.health.firstFault.map { "\($0)" } ?? "a register access failed"
            lose(.deviceLost(fault))
        } else if status.isAllOnes {
            lose(.deviceLost("CSTS reads all-ones"))
        } else if status.contains(.fatal) {
            lose(.controllerFatal)
        }
        try throwIfLost()
    }

    /// Submits `command` to `queue`, refusing at once when the controller is lost.
    @inline(__always)
    @discardableResult
    func submit(_ command: NVMeCommand, to queue: NVMeQueuePair, as slot: NVMeSlot, tag: UInt64 = 0,
                handler: NVMeCompletionHandler? = nil) throws(Failure) -> UInt16 {
        try throwIfLost()
        let identifier: UInt16
        do {
            identifier = try queue.submit(command, as: slot, tag: tag, handler: handler)
        } catch {
            if case .deviceLost = error { lose(error) }
            throw error
        }
        // Lost while submitting: fail this command too rather than leave it waiting forever.
        if isLost.load(ordering: .acquiring) { failInFlight() }
        return identifier
    }
}

/// The outcome of a tagged asynchronous read or write: the caller's tag and the NVMe status,
/// or that the controller was lost (or stopped) before completing it.
public struct NVMeIOCompletion: Sendable, Equatable {
    /// The tag the caller gave when submitting.
    public let tag: UInt64
    /// Status Code Type and Status Code; both zero on success.
    public let statusType: UInt8
    /// Status Code (SC) within the type; see the NVMe base specification's status tables.
    public let statusCode: UInt8
    /// The controller was lost or stopped before completing the command (see
    /// ``NVMeController/failure``); the status is meaningless then.
    public let deviceLost: Bool

    init(tag: UInt64, _ completion: NVMeCompletion?) {
        self.tag = tag
        statusType = completion.map { $0.status.type } ?? 0
        statusCode = completion.map { $0.status.code } ?? 0
        deviceLost = completion == nil
    }

    /// Whether the command succeeded.
    public var succeeded: Bool { !deviceLost && statusType == 0 && statusCode == 0 }
}
