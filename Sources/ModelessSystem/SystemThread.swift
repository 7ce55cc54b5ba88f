import CModelessShim

#if canImport(Glibc)
import Glibc
#endif

/// A kernel thread outside Swift's cooperative pool, optionally pinned to one CPU and run
/// under `SCHED_FIFO`: what interrupt wait threads and DPC threads are.
public final class SystemThread: @unchecked Sendable {
    /// How the thread asks to be scheduled.
    public struct Placement: Sendable, Equatable {
        /// The CPU to pin to, or `nil` for any.
        public var cpu: Int?
        /// A `SCHED_FIFO` priority (1–99), or `nil` for ordinary scheduling.
        public var realtimePriority: Int32?

        /// A placement on `cpu` (any CPU when nil) at `SCHED_FIFO` priority `realtimePriority`
        /// (ordinary scheduling when nil).
        public init(cpu: Int? = nil, realtimePriority: Int32? = nil) {
            self.cpu = cpu
            self.realtimePriority = realtimePriority
        }
    }

    /// What the thread got: a pinning or priority the system refused is reported here (and
    /// the thread runs anyway, unpinned or with ordinary priority).
    public struct Outcome: Sendable, Equatable {
        /// The thread is pinned to the CPU asked for (false when none was asked for or it was refused).
        public var pinned: Bool
        /// The thread runs under `SCHED_FIFO` (false when not asked for or refused).
        public var realtime: Bool
        /// Why a request was refused, e.g. `SCHED_FIFO: Operation not permitted`.
        public var refusals: [String]
    }

    /// The thread's name, as `ps -L` and `/proc/PID/task/TID/comm` show it (the kernel keeps 15
    /// bytes).
    public let name: String
    private var thread = pthread_t()
    private let started = ConditionLock()
    private var outcomeValue: Outcome?

    /// Starts `body` on a new thread with `placement`; returns once the placement was applied.
    public init(name: String, placement: Placement = Placement(), _ body: @escaping @Sendable () -> Void) throws(SystemError) {
        self.name = name
        let context = Unmanaged.passRetained(Box(self, placement, body)).toOpaque()
        let status = pthread_create(&thread, nil, { raw in
            let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
            box.thread.begin(box.placement)
            box.body()
            return nil
        }, context)
        guard status == 0 else {
            Unmanaged<Box>.fromOpaque(context).release()
            throw SystemError("pthread_create", name, errno: Errno(rawValue: status))
        }
        started.withLock { while outcomeValue == nil { started.wait() } }
    }

    /// How the placement request went.
    public var outcome: Outcome { started.withLock { outcomeValue! } }

    /// Waits for the thread to finish.
    public func join() { pthread_join(thread, nil) }

    private func begin(_ placement: Placement) {
        var outcome = Outcome(pinned: false, realtime: false, refusals: [])
        modeless_name_current_thread(name)
        if let cpu = placement.cpu {
            let status = modeless_pin_current_thread(Int32(cpu))
            if status == 0 { outcome.pinned = true } else {
                outcome.refusals.append("CPU \(cpu): \(Errno(rawValue: status))")
            }
        }
        if let priority = placement.realtimePriority {
            var parameters = sched_param(sched_priority: priority)
            let status = pthread_setschedparam(pthread_self(), SCHED_FIFO, &parameters)
            if status == 0 { outcome.realtime = true } else {
                outcome.refusals.append("SCHED_FIFO \(priority): \(Errno(rawValue: status))")
            }
        }
        started.withLock {
            outcomeValue = outcome
            started.broadcast()
        }
    }

    /// The CPU the calling thread is running on.
    public static var currentCPU: Int { Int(max(0, modeless_current_cpu())) }

    /// The calling thread's identity (`pthread_self`), equal only for the same thread.
    public static var currentIdentity: UInt { UInt(pthread_self()) }

    /// The number of CPUs this process may run on.
    public static var cpuCount: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }

    private final class Box {
        let thread: SystemThread
        let placement: Placement
        let body: @Sendable () -> Void
        init(_ thread: SystemThread, _ placement: Placement, _ body: @escaping @Sendable () -> Void) {
            self.thread = thread
            self.placement = placement
            self.body = body
        }
    }
}

extension Duration {
    /// The duration in whole nanoseconds, 0 if it is negative: for deadlines and waits counted
    /// against ``monotonicNanoseconds()``.
    public var wholeNanoseconds: UInt64 {
        let (seconds, attoseconds) = components
        guard seconds >= 0, attoseconds >= 0 else { return 0 }
        return UInt64(seconds) * 1_000_000_000 + UInt64(attoseconds / 1_000_000_000)
    }
}

/// Monotonic time in nanoseconds (`CLOCK_MONOTONIC`).
@inline(__always)
public func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}
