import Synchronization

/// Checks that drivers live by the kernel's rules, in the spirit of Linux's lockdep and
/// `might_sleep()` and Windows' Driver Verifier; give one to ``RuntimeOptions/verifier`` (tests
/// do, and `modeless run … --verify`). Each violation becomes a ``Report``; nothing is
/// stopped, so that a test sees every report its driver caused. The rules and the wrong
/// drivers that trip them are in docs/runtime.md.
public final class DriverVerifier: @unchecked Sendable {
    /// The rules the verifier checks.
    public enum Rule: String, Sendable, CaseIterable, CustomStringConvertible {
        /// Waiting or sleeping (a passive lock, a wait event, a synchronous device command)
        /// in an ISR or DPC, or with interrupts disabled or a spin lock held.
        case sleepAtInterruptLevel = "sleep at interrupt level"
        /// A lock class taken in an ISR is also taken with interrupts enabled somewhere (a DPC,
        /// an ordinary thread): the ISR can interrupt that holder on its CPU and wait for it
        /// forever. Reported once per class, even if the two uses never collided (lockdep's
        /// hardirq-safe / hardirq-unsafe usage states).
        case irqUnsafeLock = "irq-unsafe lock"
        /// Two lock classes taken in both orders (or a longer cycle): two CPUs taking them in
        /// the two orders deadlock. Found from every order ever taken, not from a deadlock.
        case lockOrderInversion = "lock order inversion"
        /// An ISR, a DPC or a driver entry point (``DriverRuntime/entryPoint(_:function:_:)``)
        /// returned with interrupts still disabled or a lock still held.
        case leakedOnReturn = "interrupts disabled or lock held on return"
        /// Interrupts enabled more often than disabled on a thread, or an ISR enabling the
        /// interrupts the runtime disabled for it. The enable is ignored.
        case unbalancedEnable = "unbalanced interrupt enable"
        /// A register or DMA access after its region or buffer was released or its device was
        /// closed (``DriverRuntime/watch(_:)``).
        case accessAfterRelease = "access after release"
        /// A DPC queued after it was retired (``DeferredProcedureCall/retire()``) or its
        /// runtime shut down. It does not run.
        case dpcQueuedAfterTeardown = "DPC queued after teardown"

        /// The rule's name as reports print it.
        public var description: String { rawValue }
    }

    /// One violation: the rule, the locks and code sites involved, and where it happened.
    public struct Report: Sendable, Equatable, CustomStringConvertible {
        /// The rule broken.
        public var rule: Rule
        /// The locks involved, by class name.
        public var locks: [String]
        /// The code sites involved, by function name: the offending one first.
        public var sites: [String]
        /// The context the violation happened in: "passive level", `ISR "name"` or `DPC "name"`
        /// (``ExecutionContext``).
        public var context: String
        /// What happened, in a sentence.
        public var detail: String

        /// A report of `rule` broken in `context`, with the locks and sites involved.
        public init(rule: Rule, locks: [String], sites: [String], context: String, detail: String) {
            self.rule = rule
            self.locks = locks
            self.sites = sites
            self.context = context
            self.detail = detail
        }

        /// One line: `verifier: RULE: DETAIL; locks: …; sites: …; context: …`.
        public var description: String {
            var text = "verifier: \(rule): \(detail)"
            if !locks.isEmpty { text += "; locks: \(locks.joined(separator: ", "))" }
            if !sites.isEmpty { text += "; sites: \(sites.joined(separator: " / "))" }
            return text + "; context: \(context)"
        }
    }

    /// What a thread is about to wait for.
    public enum Wait: Sendable, CustomStringConvertible {
        case passiveLock(String)
        case waitEvent(String)
        case call(String)

        /// What is waited for, as a report names it.
        public var description: String {
            switch self {
            case .passiveLock(let name): "taking passive lock \"\(name)\""
            case .waitEvent(let name): "waiting for event \"\(name)\""
            case .call(let what): what
            }
        }
    }

    /// A lock the calling thread holds, and where it took it.
    struct Held {
        var lock: LockIdentity
        var site: StaticString
    }

    private let collected = Mutex<[Report]>([])
    private let handler: (@Sendable (Report) -> Void)?
    /// Locks held by the calling thread, innermost last.
    private let held = ThreadLocalBox<[Held]>()
    /// Every lock class's uses and the orders they were taken in.
    private let book = Mutex(LockBook())

    /// A verifier that keeps every report and also hands each to `onReport` (to print it, or
    /// to fail a test at once).
    public init(onReport: (@Sendable (Report) -> Void)? = nil) {
        handler = onReport
    }

    /// Every violation so far, in order.
    public var reports: [Report] { collected.withLock { $0 } }

    /// The rules violated so far, in the order of their first report, each once.
    public var rulesReported: [Rule] {
        var seen: [Rule] = []
        for report in reports where !seen.contains(report.rule) { seen.append(report.rule) }
        return seen
    }

    func report(_ report: Report) {
        collected.withLock { $0.append(report) }
        handler?(report)
    }

    // MARK: Hooks the runtime's primitives call

    /// `lock` is being taken at `site`; `interruptsEnabled` tells whether interrupts were on
    /// on this thread when it was asked for (before a spin lock disables them).
    func willAcquire(_ lock: LockIdentity, at site: StaticString, interruptsEnabled: Bool, in runtime: any DriverRuntime) {
        let context = runtime.currentContext
        let holding = held.value ?? []
        let found = book.withLock { book in
            book.acquire(lock, at: "\(site)", context: context, interruptsEnabled: interruptsEnabled,
                         holding: holding.map { ($0.lock, "\($0.site)") })
        }
        found.forEach(report)
        held.update { $0.append(Held(lock: lock, site: site)) }
    }

    func didRelease(_ lock: LockIdentity, at site: StaticString, in runtime: any DriverRuntime) {
        held.update { stack in
            if let index = stack.lastIndex(where: { $0.lock == lock }) { stack.remove(at: index) }
        }
    }

    func willSleep(_ wait: Wait, at site: StaticString, in runtime: any DriverRuntime) {
        let spins = (held.value ?? []).filter { $0.lock.kind == .spin }
        let context = runtime.currentContext
        let why: String? =
            context != .passive ? context.phrase
            : runtime.isAtInterruptLevel ? "at interrupt level"
            : !spins.isEmpty ? "with a spin lock held"
            : runtime.interruptsDisabledOnThisThread ? "with interrupts disabled"
            : nil
        guard let why else { return }
        var locks = spins.map(\.lock.name)
        if case .passiveLock(let name) = wait { locks.append(name) }
        report(Report(rule: .sleepAtInterruptLevel, locks: locks,
                      sites: ["\(site)"] + spins.map { "\($0.site)" }, context: context.description,
                      detail: "\(wait) \(why)"))
    }

    /// How many locks this thread holds, for ``checkReturn(of:heldBefore:leakedDisables:context:)``.
    var heldCount: Int { held.value?.count ?? 0 }

    /// `what` (an ISR, a DPC, an entry point) returned: reports the interrupt disables and the
    /// locks it left behind, and forgets those locks so that later checks are not confused.
    func checkReturn(of what: @autoclosure () -> String, site: @autoclosure () -> String?, heldBefore: Int, leakedDisables: Int,
                     context: @autoclosure () -> ExecutionContext) {
        if leakedDisables == 0 && heldCount == heldBefore { return }  // The usual case, allocation-free.
        let leaked: [Held] = held.value.map { Array($0.dropFirst(heldBefore)) } ?? []
        if !leaked.isEmpty { held.update { $0.removeLast(leaked.count) } }
        guard leakedDisables > 0 || !leaked.isEmpty else { return }
        var problems: [String] = []
        if leakedDisables > 0 {
            problems.append("interrupts disabled (\(leakedDisables) disable\(leakedDisables == 1 ? "" : "s") not undone)")
        }
        if !leaked.isEmpty {
            problems.append("\(leaked.map { $0.lock.description }.joined(separator: ", ")) held")
        }
        report(Report(rule: .leakedOnReturn, locks: leaked.map(\.lock.name),
                      sites: (site().map { [$0] } ?? []) + leaked.map { "\($0.site)" }, context: context().description,
                      detail: "\(what()) returned with \(problems.joined(separator: " and "))"))
    }

    /// An enable without a matching disable, which the runtime ignored.
    func unbalancedEnable(context: ExecutionContext, inISR: Bool) {
        let detail = inISR
            ? "interrupts enabled in an ISR more often than it disabled them (an ISR runs with interrupts disabled and must return so)"
            : "interrupts enabled more often than disabled on this thread"
        report(Report(rule: .unbalancedEnable, locks: [], sites: [], context: context.description, detail: detail + "; the enable was ignored"))
    }

    /// An access to `what` after it was released.
    func accessAfterRelease(_ what: String, fault: String, site: String?, context: ExecutionContext) {
        report(Report(rule: .accessAfterRelease, locks: [], sites: site.map { [$0] } ?? [], context: context.description,
                      detail: "\(what): \(fault)"))
    }

    /// `dpc` was queued after its teardown; it will not run.
    func queuedAfterTeardown(_ dpc: String, why: String, context: ExecutionContext) {
        report(Report(rule: .dpcQueuedAfterTeardown, locks: [], sites: [], context: context.description,
                      detail: "DPC \"\(dpc)\" queued after \(why); it does not run"))
    }
}
