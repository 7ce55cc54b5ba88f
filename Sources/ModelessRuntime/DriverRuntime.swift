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

    /// What the calling thread is running: passive-level code, a DPC or an ISR, by name.
    var currentContext: ExecutionContext { get }

    /// Keeps the ISRs from running until the matching ``enableInterrupts()``. Nests.
    func disableInterrupts()
    /// Ends the matching ``disableInterrupts()``; the ISRs run again once the outermost ends.
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

/// What the runtimes share with the verifier's checks.
protocol CheckedRuntime: DriverRuntime {
    var depth: InterruptDepth { get }
}

extension DriverRuntime {
    /// Runs `body` as the driver entry point `name` (start, stop, a submission call): under the
    /// verifier, returning with interrupts still disabled or a lock still held is reported
    /// (``DriverVerifier/Rule/leakedOnReturn``) and the disables are undone. Without a
    /// verifier it only calls `body`.
    public func entryPoint<Result>(_ name: String, function: StaticString = #function,
                                   _ body: () throws -> Result) rethrows -> Result {
        guard let verifier, let checked = self as? any CheckedRuntime else { return try body() }
        let held = verifier.heldCount
        let disables = checked.depth.count
        defer {
            let leaked = checked.depth.count - disables
            verifier.checkReturn(of: "entry point \"\(name)\"", site: "\(function)", heldBefore: held,
                                 leakedDisables: max(0, leaked), context: currentContext)
            if leaked > 0 { for _ in 0..<leaked { enableInterrupts() } }
        }
        return try body()
    }

    /// Under the verifier, reports every access to `device`'s registers after the device was
    /// closed or its regions released (``DriverVerifier/Rule/accessAfterRelease``). Call it
    /// once, when the driver starts; without a verifier it does nothing.
    public func watch(_ device: any DeviceAccess) {
        guard let verifier else { return }
        let address = device.address
        for (index, region) in device.regions.sorted(by: { $0.key < $1.key }) {
            region.health.addObserver { [weak self] fault, site in
                guard case .accessAfterRelease(let what) = fault else { return }
                verifier.accessAfterRelease("BAR\(index) of \(address)", fault: what, site: site.map { "\($0)" },
                                            context: self?.currentContext ?? .passive)
            }
        }
    }

    /// Under the verifier, reports every access to `buffer` after it was freed or its device
    /// closed (``DriverVerifier/Rule/accessAfterRelease``). Without a verifier it does nothing.
    public func watch(_ buffer: DMABuffer, name: String) {
        guard let verifier else { return }
        buffer.health.addObserver { [weak self] fault, site in
            guard case .accessAfterRelease(let what) = fault else { return }
            verifier.accessAfterRelease("DMA buffer \"\(name)\"", fault: what, site: site.map { "\($0)" },
                                        context: self?.currentContext ?? .passive)
        }
    }
}

/// Why the runtime could not do something.
public struct RuntimeError: Error, Sendable, CustomStringConvertible {
    /// What failed, in a sentence that names the call or resource.
    public var message: String
    /// An error saying `message`.
    public init(_ message: String) { self.message = message }
    /// The message.
    public var description: String { message }
}

/// Choices made when a runtime starts.
public struct RuntimeOptions: Sendable {
    /// CPUs for wait, interrupt and DPC threads (default: all).
    public var cpus: Int
    /// `SCHED_FIFO` priorities: interrupt-level threads above DPC threads above ordinary ones.
    /// `nil` disables real-time scheduling.
    public var interruptPriority: Int32?
    /// The `SCHED_FIFO` priority of DPC threads (below ``interruptPriority``); `nil` for none.
    public var dpcPriority: Int32?
    /// Record every interrupt's stages.
    public var trace: InterruptTrace?
    /// Check the driver against the kernel's rules (``DriverVerifier``).
    public var verifier: DriverVerifier?

    /// Options with every CPU, interrupt-level threads at `SCHED_FIFO` 50 and DPC threads at 40,
    /// no trace and no verifier unless given. `cpus` below 1 counts as 1.
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

#if canImport(Glibc)
import Glibc
#endif
