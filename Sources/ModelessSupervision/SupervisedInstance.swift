import ModelessLogical
import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// A provider process's side of supervision: its instance name, its state file, and the
/// request guard that makes a request sent again after a failover execute only once.
///
/// The supervisor starts each instance with `MODELESS_INSTANCE` (its name),
/// `MODELESS_INSTANCE_STATE` (its state file) and `MODELESS_SERVICE_STATE_DIR` (the
/// directory with its siblings' state files); ``fromEnvironment()`` reads them.
public final class SupervisedInstance: @unchecked Sendable {
    /// The instance's name, which is also its container's.
    public let name: String
    /// The instance's saved state: its resume record and its request ledger, which survive the
    /// process and are read by its replacement.
    public let state: InstanceStateFile
    /// The directory holding every instance's state file.
    public let stateDirectory: String
    /// Which start of this instance this is (1 for the first).
    public let start: UInt64
    /// Requests the previous instance of this name had begun and not completed when it died.
    public let interruptedRequests: [UInt64]
    private let lock = ConditionLock()
    private var counters: Counters
    /// Fault injection for tests: the process kills itself with SIGKILL right after recording
    /// its Nth completed request without output, before the reply goes out — the one point
    /// where a request is executed and recorded but its consumer never hears so.
    private let crashAfterRecording: Int?
    private var recordedWithoutOutput = 0

    /// What the instance did, across its restarts (kept in the saved record).
    public struct Counters: Sendable, Equatable {
        /// Requests executed.
        public var executed: UInt64 = 0
        /// Requests sent again after a failover and answered from a ledger without executing.
        public var replayed: UInt64 = 0

        /// Counters starting from the given values; a restarted instance starts from its saved record's.
        public init(executed: UInt64 = 0, replayed: UInt64 = 0) {
            self.executed = executed
            self.replayed = replayed
        }
    }

    /// The instance the supervisor started this process as, or nil if it was not started by one.
    public static func fromEnvironment() throws(SupervisionError) -> SupervisedInstance? {
        func variable(_ name: String) -> String? { getenv(name).map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 } }
        guard let name = variable("MODELESS_INSTANCE") else { return nil }
        guard let path = variable("MODELESS_INSTANCE_STATE"), let directory = variable("MODELESS_SERVICE_STATE_DIR") else {
            throw SupervisionError("MODELESS_INSTANCE is set but MODELESS_INSTANCE_STATE or MODELESS_SERVICE_STATE_DIR is not: start instances with `modeless supervise`")
        }
        let crash = variable("MODELESS_CRASH_AFTER_RECORD").flatMap { Int($0) }
        return try SupervisedInstance(name: name, statePath: path, stateDirectory: directory, crashAfterRecording: crash)
    }

    /// Opens the instance's state file, counts this start, and takes over what a dead
    /// predecessor left: its counters, and its interrupted requests.
    public init(name: String, statePath: String, stateDirectory: String, crashAfterRecording: Int? = nil) throws(SupervisionError) {
        self.name = name
        self.crashAfterRecording = crashAfterRecording
        self.stateDirectory = stateDirectory
        state = try InstanceStateFile(path: statePath)
        start = state.beginStart()
        interruptedRequests = state.ledger.markInterrupted()
        counters = state.record.load().flatMap(Self.decode) ?? Counters()
    }

    /// What the instance did so far, this start and the ones before.
    public var totals: Counters { lock.withLock { counters } }

    /// `handlers` with every request guarded: a request with a request id is recorded in the
    /// ledger when it begins and when it completes, before its reply goes out; a request
    /// marked `RequestFlags.reissued` that this instance or a sibling recorded as completed
    /// without output is answered from that record and not executed again.
    public func guarding(_ handlers: LogicalDeviceHandlers) -> LogicalDeviceHandlers {
        var guarded = handlers
        guarded.request = { context in try self.handle(context, handlers.request) }
        return guarded
    }

    private func handle(_ context: RequestContext, _ execute: @Sendable (RequestContext) throws -> Void) throws {
        let block = context.block
        let requestID = block.requestID
        guard requestID != 0 else { return try execute(context) }
        if block.flags.contains(.reissued), let recorded = completedRecord(of: requestID), recorded.outputLength == 0 {
            count { $0.replayed += 1 }
            try block.output.setLength(0)
            if let failure = recorded.failure {
                throw LogicalDeviceError(failure, "request \(requestID) failed before the failover (answered from the ledger)")
            }
            return
        }
        let slot = state.ledger.begin(requestID)
        do {
            try execute(context)
        } catch {
            let failure = LogicalDeviceError.Kind.of(error)
            state.ledger.complete(slot, requestID: requestID, failure: failure, outputLength: 0)
            count { $0.executed += 1 }
            throw error
        }
        state.ledger.complete(slot, requestID: requestID, failure: nil, outputLength: block.output.length)
        count { $0.executed += 1 }
        if let crashAfterRecording, block.output.length == 0 {
            let reached = lock.withLock { () -> Bool in
                recordedWithoutOutput += 1
                return recordedWithoutOutput == crashAfterRecording
            }
            if reached { kill(getpid(), SIGKILL) }
        }
    }

    /// The completed record of `requestID` in this instance's ledger or a sibling's.
    func completedRecord(of requestID: UInt64) -> RequestLedger.Entry? {
        if let entry = state.ledger.completed(requestID) { return entry }
        for path in Self.stateFiles(in: stateDirectory) where path != state.path {
            guard let sibling = try? InstanceStateFile(path: path, readOnly: true) else { continue }
            defer { sibling.close() }
            if let entry = sibling.ledger.completed(requestID) { return entry }
        }
        return nil
    }

    private func count(_ change: (inout Counters) -> Void) {
        let snapshot = lock.withLock {
            change(&counters)
            return counters
        }
        try? state.record.save(Self.encode(snapshot))
    }

    static func encode(_ counters: Counters) -> [UInt8] {
        withUnsafeBytes(of: counters.executed.littleEndian) { Array($0) } + withUnsafeBytes(of: counters.replayed.littleEndian) { Array($0) }
    }

    /// Counters from a saved record, or nil if it is not one.
    public static func decode(_ bytes: [UInt8]) -> Counters? {
        guard bytes.count == 16 else { return nil }
        let values = bytes.withUnsafeBytes { raw in (0..<2).map { UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 8, as: UInt64.self)) } }
        return Counters(executed: values[0], replayed: values[1])
    }

    /// The state files (`*.state`) in `directory`.
    public static func stateFiles(in directory: String) -> [String] {
        let names = (try? FileAccess.listDirectory(directory)) ?? []
        return names.filter { $0.hasSuffix(".state") }.map { directory + "/" + $0 }
    }
}

extension LogicalDeviceError.Kind {
    /// The kind a handler's thrown error is reported as.
    static func of(_ error: any Error) -> LogicalDeviceError.Kind {
        (error as? LogicalDeviceError)?.kind ?? .requestFailed
    }
}
