import Synchronization

/// Checks that drivers live by the kernel's rules, in the spirit of Linux's lockdep and
/// `might_sleep()` and Windows' Driver Verifier; give one to ``RuntimeOptions/verifier`` (tests
/// do, and `modeless run … --verify`). Each violation becomes a ``Report``; nothing is
/// stopped, so that a test sees every report its driver caused.
public final class DriverVerifier: @unchecked Sendable {
    /// The rules the verifier checks.
    public enum Rule: String, Sendable, CaseIterable, CustomStringConvertible {
        /// Waiting or sleeping (a passive lock, a wait event, a synchronous device command)
        /// in an ISR or DPC, or with interrupts disabled or a spin lock held.
        case sleepAtInterruptLevel = "sleep at interrupt level"

        public var description: String { rawValue }
    }

    /// One violation: the rule, the locks and code sites involved, and where it happened.
    public struct Report: Sendable, Equatable, CustomStringConvertible {
        public var rule: Rule
        /// The locks involved, by class name.
        public var locks: [String]
        /// The code sites involved, by function name: the offending one first.
        public var sites: [String]
        /// The ISR or DPC running, or "passive level".
        public var context: String
        /// What happened, in a sentence.
        public var detail: String

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

        public var description: String {
            switch self {
            case .passiveLock(let name): "taking passive lock \"\(name)\""
            case .waitEvent(let name): "waiting for event \"\(name)\""
            case .call(let what): what
            }
        }
    }

    private let collected = Mutex<[Report]>([])
    private let handler: (@Sendable (Report) -> Void)?
    /// Spin locks held by the calling thread, innermost last.
    private let held = ThreadLocalBox<[(LockIdentity, StaticString)]>()

    /// A verifier that keeps every report and also hands each to `onReport` (to print it, or
    /// to fail a test at once).
    public init(onReport: (@Sendable (Report) -> Void)? = nil) {
        handler = onReport
    }

    /// Every violation so far, in order.
    public var reports: [Report] { collected.withLock { $0 } }

    func report(_ report: Report) {
        collected.withLock { $0.append(report) }
        handler?(report)
    }

    private func context(of runtime: any DriverRuntime) -> String {
        runtime.isAtInterruptLevel ? "interrupt level (ISR or DPC)" : "passive level"
    }

    // MARK: Hooks the runtime's primitives call

    func willAcquire(_ lock: LockIdentity, at site: StaticString, in runtime: any DriverRuntime) {
        guard lock.kind == .spin else { return }
        held.update { $0.append((lock, site)) }
    }

    func didRelease(_ lock: LockIdentity, at site: StaticString, in runtime: any DriverRuntime) {
        guard lock.kind == .spin else { return }
        held.update { stack in
            if let index = stack.lastIndex(where: { $0.0 == lock }) { stack.remove(at: index) }
        }
    }

    func willSleep(_ wait: Wait, at site: StaticString, in runtime: any DriverRuntime) {
        let spins = held.value ?? []
        let why: String? =
            runtime.isAtInterruptLevel ? "in an ISR or DPC"
            : !spins.isEmpty ? "with a spin lock held"
            : runtime.interruptsDisabledOnThisThread ? "with interrupts disabled"
            : nil
        guard let why else { return }
        var locks = spins.map(\.0.name)
        if case .passiveLock(let name) = wait { locks.append(name) }
        report(Report(rule: .sleepAtInterruptLevel, locks: locks,
                      sites: ["\(site)"] + spins.map { "\($0.1)" }, context: context(of: runtime),
                      detail: "\(wait) \(why)"))
    }
}
