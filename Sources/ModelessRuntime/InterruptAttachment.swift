#if canImport(Glibc)
import Glibc
#endif
import ModelessDevice
import ModelessSystem
import Synchronization

/// An attached interrupt vector and what happened on it.
///
/// Serving an interrupt allocates nothing and counts no references: the wait descriptors are
/// set up at attach, and a failed wait or unmask is recorded here (``lastError``,
/// ``failures``) rather than dropped.
public final class InterruptAttachment: @unchecked Sendable {
    /// The name given at ``DriverRuntime/attachInterrupt(_:name:acknowledge:isr:)``.
    public let name: String
    /// The attachment's number in this runtime: the subject of its ``InterruptTrace`` records.
    public let identifier: Int32
    /// The CPU its wait (or interrupt) thread is pinned to.
    public let cpu: Int
    let vector: InterruptVector
    let acknowledge: @Sendable () -> UInt64
    let isr: @Sendable (UInt64) -> Void
    let stop: EventNotifier
    /// The wait thread's own duplicate of an eventfd vector's descriptor: it stays valid even
    /// if the device closes its eventfd first, and detaching wakes the thread through it.
    let ownEventfd: Int32
    /// The vector's descriptor and the stop eventfd, polled together for a vector that is not
    /// an eventfd (UIO); set up once.
    private let pollSet = UnsafeMutablePointer<pollfd>.allocate(capacity: 2)
    var thread: SystemThread?
    private let notificationsCount = Atomic<Int>(0)
    private let interruptsCount = Atomic<Int>(0)
    private let failureCount = Atomic<Int>(0)
    private let lastFailure = Mutex<RuntimeError?>(nil)
    private let serving = Atomic<Bool>(true)
    private let stopping = Atomic<Bool>(false)

    init(name: String, identifier: Int32, cpu: Int, vector: InterruptVector,
         acknowledge: @escaping @Sendable () -> UInt64, isr: @escaping @Sendable (UInt64) -> Void) throws(SystemError) {
        self.name = name
        self.identifier = identifier
        self.cpu = cpu
        self.vector = vector
        self.acknowledge = acknowledge
        self.isr = isr
        stop = try EventNotifier()
        ownEventfd = vector.deliversOnEventfd ? try systemCall("dup", "interrupt eventfd") { fcntl(vector.fd, F_DUPFD_CLOEXEC, 0) } : -1
        pollSet[0] = pollfd(fd: vector.fd, events: Int16(POLLIN), revents: 0)
        pollSet[1] = pollfd(fd: stop.fd, events: Int16(POLLIN), revents: 0)
    }

    deinit { pollSet.deallocate() }

    /// How many times the ISR ran.
    public var isrCalls: Int { notificationsCount.load(ordering: .relaxed) }
    /// How many interrupts were counted (several arriving before the ISR ran are coalesced
    /// into one call, and counted here).
    public var interrupts: Int { interruptsCount.load(ordering: .relaxed) }
    /// How many waits and unmasks failed.
    public var failures: Int { failureCount.load(ordering: .relaxed) }
    /// The latest failed wait or unmask (an INTx that stays masked, a descriptor that went bad),
    /// naming the operation; nil while none failed.
    public var lastError: RuntimeError? { lastFailure.withLock { $0 } }
    /// Whether its thread still waits for interrupts: false after ``DriverRuntime/detachInterrupt(_:)``,
    /// or after a wait failed for good (then ``lastError`` says why).
    public var isServing: Bool { serving.load(ordering: .acquiring) }

    func counted(_ interrupts: UInt64) {
        notificationsCount.wrappingAdd(1, ordering: .relaxed)
        interruptsCount.wrappingAdd(Int(interrupts), ordering: .relaxed)
    }

    /// Records a failure the driver found while serving this vector (say, its device stopped
    /// answering: registers read all-ones), in ``failures`` and ``lastError``, as the runtime
    /// records a failed wait or unmask. Allocation-free only on the way out: call it once per
    /// fault, not per interrupt.
    public func recordFailure(_ description: String) { fail(description) }

    /// Records a failure; off the fast path.
    @inline(never)
    func fail(_ what: String) {
        failureCount.wrappingAdd(1, ordering: .relaxed)
        let error = RuntimeError("interrupt \(name): \(what)")
        lastFailure.withLock { $0 = error }
    }

    /// Re-enables the vector after its ISR (INTx; nothing for MSI); a failure is recorded.
    @inline(__always)
    func unmask() {
        do throws(DeviceError) {
            try vector.acknowledge()
        } catch {
            fail("unmasking failed, the line may stay masked: \(error)")
        }
    }

    /// Waits for the vector or the stop signal; returns the interrupt count, or nil to stop.
    ///
    /// An eventfd vector (VFIO, models) is waited on with a single blocking `read`, as a bare
    /// eventfd waiter would, and stopped by a write to it; others (UIO) are polled together
    /// with a stop eventfd. A wait that fails for good is recorded (``lastError``) and ends the
    /// thread (``isServing`` turns false).
    func nextInterrupts() -> UInt64? {
        if ownEventfd >= 0 {
            var count: UInt64 = 0
            while true {
                let result = read(ownEventfd, &count, 8)
                if result == 8 { break }
                let error = Errno.current
                if result < 0 && error == .interrupted { continue }
                return ended("reading its eventfd failed: \(result < 0 ? "\(error)" : "short read of \(result) bytes")")
            }
            return stopping.load(ordering: .acquiring) ? ended(nil) : count
        }
        while true {
            pollSet[0].revents = 0
            pollSet[1].revents = 0
            let ready = poll(pollSet, 2, -1)
            if ready < 0 {
                let error = Errno.current
                if error == .interrupted { continue }
                return ended("polling \(vector.kind) vector \(vector.index) failed: \(error)")
            }
            if pollSet[1].revents != 0 || stopping.load(ordering: .acquiring) { return ended(nil) }
            if pollSet[0].revents & Int16(POLLIN) == 0 {
                return ended("\(vector.kind) vector \(vector.index)'s descriptor reported \(pollSet[0].revents) instead of an interrupt (the device was closed?)")
            }
            do throws(DeviceError) {
                return try vector.wait()
            } catch {
                return ended("reading the interrupt count failed: \(error)")
            }
        }
    }

    /// The thread stops waiting: on request (`failure` nil) or because of `failure`.
    private func ended(_ failure: String?) -> UInt64? {
        if let failure, !stopping.load(ordering: .acquiring) { fail(failure + "; no more interrupts are delivered") }
        serving.store(false, ordering: .releasing)
        return nil
    }

    /// Stops the thread and waits for it.
    func detach() {
        guard let thread else { return }
        stopping.store(true, ordering: .releasing)
        if ownEventfd >= 0 {
            var one: UInt64 = 1
            _ = write(ownEventfd, &one, 8)
        }
        do throws(SystemError) { try stop.signal() } catch { fail("waking the wait thread to stop failed: \(error)") }
        thread.join()
        self.thread = nil
        if ownEventfd >= 0 { close(ownEventfd) }
        stop.close()
    }
}
