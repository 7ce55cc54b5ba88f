import ModelessDevice
import ModelessSystem
import Synchronization

/// The one API a driver uses for interrupts and deferred work, whatever the execution mode.
///
/// A driver attaches its interrupt vectors with two routines: `acknowledge`, which reads and
/// clears the device's interrupt cause and returns it (the "saved device state"), and `isr`,
/// the real ISR, which services the interrupt with that state and queues DPCs for the rest.
/// Code that shares data with the ISR brackets it with ``disableInterrupts()`` and
/// ``enableInterrupts()`` (or ``withInterruptsDisabled(_:)``), which nest on one thread.
public protocol DriverRuntime: AnyObject, Sendable {
    /// The mode the driver was launched in; for logs only.
    var mode: ExecutionMode { get }
    /// The interrupt trace, when tracing was asked for.
    var trace: InterruptTrace? { get }
    /// Scheduling requests the system refused (no permission for `SCHED_FIFO`, say); the
    /// runtime works without them, with weaker latency.
    var refusals: [String] { get }

    /// Starts delivering `vector`'s interrupts: `acknowledge` then `isr(state)`.
    func attachInterrupt(_ vector: InterruptVector, name: String,
                         acknowledge: @escaping @Sendable () -> UInt64,
                         isr: @escaping @Sendable (UInt64) -> Void) throws(RuntimeError) -> InterruptAttachment

    /// Stops delivering an attachment's interrupts and waits until its ISR is no longer running.
    /// Detach before disabling the device's interrupts.
    func detachInterrupt(_ attachment: InterruptAttachment)

    /// A DPC running `body`; make it once and queue it as often as needed.
    func makeDPC(_ name: String, _ body: @escaping @Sendable () -> Void) -> DeferredProcedureCall

    /// Whether the calling thread is running one of this runtime's ISRs or DPCs. Code there
    /// must not wait for the device: the interrupt it would wait for, or the DPC that would
    /// complete it, runs on this same thread only after it returns. Drivers check this before
    /// blocking and refuse with a clear error instead of stalling.
    var isAtInterruptLevel: Bool { get }

    /// Whether interrupts are disabled on the calling thread: between ``disableInterrupts()``
    /// and ``enableInterrupts()``, with a ``SpinLock`` held, or in an ISR (which runs with
    /// interrupts disabled, so that it can take the spin locks it shares with other code).
    var interruptsDisabledOnThisThread: Bool { get }

    /// The verifier checking this runtime's driver, if one was given in ``RuntimeOptions``.
    var verifier: DriverVerifier? { get }

    /// Keeps the ISRs from running until the matching ``enableInterrupts()``. Nests.
    func disableInterrupts()
    func enableInterrupts()

    /// Detaches every interrupt and stops the runtime's threads.
    func shutdown()
}

extension DriverRuntime {
    /// Runs `body` with interrupts disabled.
    @inline(__always)
    public func withInterruptsDisabled<Result>(_ body: () throws -> Result) rethrows -> Result {
        disableInterrupts()
        defer { enableInterrupts() }
        return try body()
    }
}

/// Why the runtime could not do something.
public struct RuntimeError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Choices made when a runtime starts.
public struct RuntimeOptions: Sendable {
    /// CPUs for wait, interrupt and DPC threads (default: all).
    public var cpus: Int
    /// `SCHED_FIFO` priorities: interrupt-level threads above DPC threads above ordinary ones.
    /// `nil` disables real-time scheduling.
    public var interruptPriority: Int32?
    public var dpcPriority: Int32?
    /// Record every interrupt's stages.
    public var trace: InterruptTrace?
    /// Check the driver against the kernel's rules (``DriverVerifier``).
    public var verifier: DriverVerifier?

    public init(cpus: Int = SystemThread.cpuCount, interruptPriority: Int32? = 50, dpcPriority: Int32? = 40,
                trace: InterruptTrace? = nil, verifier: DriverVerifier? = nil) {
        self.cpus = max(1, cpus)
        self.interruptPriority = interruptPriority
        self.dpcPriority = dpcPriority
        self.trace = trace
        self.verifier = verifier
    }
}

/// Starts a runtime for `mode`: the only place the mode is looked at.
public func makeRuntime(_ mode: ExecutionMode, options: RuntimeOptions = RuntimeOptions()) throws(RuntimeError) -> any DriverRuntime {
    switch mode {
    case .user: try UserModeRuntime(options: options)
    case .kernelEmulation: try KernelEmulation(options: options)
    }
}

/// An attached interrupt vector and what happened on it.
public final class InterruptAttachment: @unchecked Sendable {
    public let name: String
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
    var thread: SystemThread?
    private let notificationsCount = Atomic<Int>(0)
    private let interruptsCount = Atomic<Int>(0)

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
    }

    /// How many times the ISR ran.
    public var isrCalls: Int { notificationsCount.load(ordering: .relaxed) }
    /// How many interrupts were counted (several arriving before the ISR ran are coalesced
    /// into one call, and counted here).
    public var interrupts: Int { interruptsCount.load(ordering: .relaxed) }

    func counted(_ interrupts: UInt64) {
        notificationsCount.wrappingAdd(1, ordering: .relaxed)
        interruptsCount.wrappingAdd(Int(interrupts), ordering: .relaxed)
    }

    private let stopping = Atomic<Bool>(false)

    /// Waits for the vector or the stop signal; returns the interrupt count, or nil to stop.
    ///
    /// An eventfd vector (VFIO, models) is waited on with a single blocking `read`, as a bare
    /// eventfd waiter would, and stopped by a write to it; others (UIO) are polled together
    /// with a stop eventfd.
    func nextInterrupts() -> UInt64? {
        if ownEventfd >= 0 {
            var count: UInt64 = 0
            while true {
                let result = read(ownEventfd, &count, 8)
                if result == 8 { break }
                if result < 0 && Errno.current == .interrupted { continue }
                return nil
            }
            return stopping.load(ordering: .acquiring) ? nil : count
        }
        var descriptors = [pollfd(fd: vector.fd, events: Int16(POLLIN), revents: 0),
                           pollfd(fd: stop.fd, events: Int16(POLLIN), revents: 0)]
        while true {
            let ready = poll(&descriptors, 2, -1)
            if ready < 0 && Errno.current == .interrupted { continue }
            guard ready > 0, descriptors[1].revents == 0 else { return nil }
            if descriptors[0].revents & Int16(POLLIN) == 0 { return nil }
            return (try? vector.wait()) ?? nil
        }
    }

    /// Stops the thread and waits for it.
    func detach() {
        guard let thread else { return }
        stopping.store(true, ordering: .releasing)
        if ownEventfd >= 0 {
            var one: UInt64 = 1
            _ = write(ownEventfd, &one, 8)
        }
        try? stop.signal()
        thread.join()
        self.thread = nil
        if ownEventfd >= 0 { close(ownEventfd) }
        stop.close()
    }
}

#if canImport(Glibc)
import Glibc
#endif
