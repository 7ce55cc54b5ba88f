import ModelessLogical
import ModelessSystem

/// A consumer of a supervised service: one logical device provided by several instances
/// (`storage-0/disk`, `storage-1/disk`, ...). Requests go to one instance; when it fails, the
/// client moves to a surviving or restarted instance and sends the failed request again, with
/// the same request id and marked `RequestFlags.reissued`, so that the provider executes it
/// only once. The caller sees every request answered exactly once.
public final class ServiceClient: @unchecked Sendable {
    /// A move from a failed instance to another.
    public struct Failover: Sendable {
        /// The instance that failed.
        public var from: String
        /// The instance that answered the request sent again.
        public var to: String
        /// From the failure seen to the answer from the new instance.
        public var nanoseconds: UInt64
        /// The request that was in flight.
        public var requestID: UInt64
    }

    /// The container the instances' providers are reached through; requests are sent on its
    /// connections.
    public let container: LogicalContainer
    /// The instances' container names, in the order they are tried.
    public let instances: [String]
    /// The logical device's name inside each instance's container (`disk` in `storage-0/disk`).
    public let device: String
    /// How long to keep trying to reach an instance after a failure before giving up.
    public let recoverySeconds: Double
    /// Called after every failover, on the sending thread.
    public var onFailover: (@Sendable (Failover) -> Void)?

    private let lock = ConditionLock()
    private var current: (instance: String, handle: LogicalDeviceHandle)?
    private var nextRequest: UInt64
    private var preferred = 0

    /// A client of `device` provided by the containers named in `instances`.
    public init(container: LogicalContainer, instances: [String], device: String, recoverySeconds: Double = 30) {
        precondition(!instances.isEmpty, "a service has at least one instance")
        self.container = container
        self.instances = instances
        self.device = device
        self.recoverySeconds = recoverySeconds
        // Ids from different clients differ in their top 32 bits.
        nextRequest = UInt64(UInt32.random(in: 1...UInt32.max)) << 32
    }

    /// The instance requests go to now, if one is open.
    public var currentInstance: String? { lock.withLock { current?.instance } }

    /// Sends `block` and waits for its answer, failing over as often as needed within
    /// ``recoverySeconds`` of each failure. A request without a request id gets a new one.
    public func send(_ block: ParameterBlock) throws(LogicalDeviceError) {
        if block.requestID == 0 { block.requestID = lock.withLock { nextRequest += 1; return nextRequest } }
        var failedAt: (instance: String, time: UInt64)?
        while true {
            let target: (instance: String, handle: LogicalDeviceHandle)
            do {
                target = try connection(since: failedAt?.time)
            }
            if failedAt != nil { block.flags.insert(.reissued) }
            do {
                try container.send(target.handle, block)
                if let failedAt {
                    onFailover?(Failover(from: failedAt.instance, to: target.instance,
                                         nanoseconds: monotonicNanoseconds() - failedAt.time, requestID: block.requestID))
                }
                return
            } catch where Self.isInstanceFailure(error) {
                drop(target.handle)
                if failedAt == nil { failedAt = (target.instance, monotonicNanoseconds()) }
            }
        }
    }

    /// Closes the open instance, if any.
    public func close() {
        let handle = lock.withLock { () -> LogicalDeviceHandle? in
            defer { current = nil }
            return current?.handle
        }
        if let handle { try? container.close(handle) }
    }

    /// Whether `error` means the instance is gone, or its device is (rather than that the
    /// request failed): the client then tries the other instances.
    static func isInstanceFailure(_ error: LogicalDeviceError) -> Bool {
        [.providerTerminated, .noSuchContainer, .noSuchDevice, .deviceRemoved].contains(error.kind)
    }

    /// The open instance, or the first of the instances that opens, starting after the
    /// last one that failed; retried until ``recoverySeconds`` after `failure`.
    private func connection(since failure: UInt64?) throws(LogicalDeviceError) -> (instance: String, handle: LogicalDeviceHandle) {
        if let current = lock.withLock({ current }) { return current }
        let deadline = (failure ?? monotonicNanoseconds()) + UInt64(recoverySeconds * 1e9)
        var pause: UInt32 = 1000
        var lastError: LogicalDeviceError?
        while true {
            for step in 0..<instances.count {
                let index = (preferred + step) % instances.count
                do {
                    let handle = try container.open(instances[index] + "/" + device)
                    lock.withLock {
                        preferred = index
                        current = (instances[index], handle)
                    }
                    return (instances[index], handle)
                } catch where Self.isInstanceFailure(error) {
                    lastError = error
                }
            }
            guard monotonicNanoseconds() < deadline else {
                throw LogicalDeviceError(
                    .providerTerminated,
                    "no instance of \(device) (\(instances.joined(separator: ", "))) answered within \(recoverySeconds) s: \(lastError.map { "\($0)" } ?? "")")
            }
            // Short pauses: a failed attempt costs a few microseconds, while a long pause is
            // added whole to the recovery time of a replacement that became ready meanwhile.
            usleep(pause)
            pause = min(pause * 2, 2000)
        }
    }

    private func drop(_ handle: LogicalDeviceHandle) {
        lock.withLock {
            if current?.handle == handle { current = nil }
            preferred = (preferred + 1) % instances.count
        }
        try? container.close(handle)
    }
}

#if canImport(Glibc)
import Glibc
#endif
