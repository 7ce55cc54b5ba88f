/// How deeply the calling thread has disabled interrupts, in one thread-local word: the
/// nesting count in the low half, and in the high half the floor an ISR starts from (an ISR
/// runs with interrupts disabled once, by the runtime, which the driver must not undo).
///
/// Only the outermost disable and enable act on the runtime's interrupt state; an enable that
/// would go below the floor is unbalanced, which the runtime refuses.
struct InterruptDepth: @unchecked Sendable {
    private let word: ThreadLocalInteger

    init(_ keys: ThreadLocalKeys) { word = keys.make() }

    private static let countMask = (1 << 32) - 1

    /// What an enable did.
    enum Enable {
        /// The count reached zero: interrupts are on again on this thread.
        case outermost
        /// A nested enable: still disabled.
        case nested
        /// More enables than disables (or an ISR enabling the interrupts the runtime disabled
        /// for it): nothing changed.
        case unbalanced
    }

    /// Whether interrupts are disabled on this thread.
    @inline(__always)
    var isDisabled: Bool { word.current & Self.countMask != 0 }

    /// The nesting count.
    var count: Int { word.current & Self.countMask }

    /// Counts one disable; true when it was the outermost (interrupts were on until now).
    @inline(__always)
    func disable() -> Bool {
        let value = word.current
        word.set(value + 1)
        return value & Self.countMask == 0
    }

    /// Counts one enable.
    @inline(__always)
    func enable() -> Enable {
        let value = word.current
        let count = value & Self.countMask
        guard count > value >> 32 else { return .unbalanced }
        word.set(value - 1)
        return count == 1 ? .outermost : .nested
    }

    /// Enters an ISR: interrupts disabled once more, and that disable made the floor. Returns
    /// the word to hand to ``leaveISR(_:)``.
    @inline(__always)
    func enterISR() -> Int {
        let saved = word.current
        let count = (saved & Self.countMask) + 1
        word.set(count << 32 | count)
        return saved
    }

    /// Leaves an ISR, restoring the word `enterISR` returned; returns how many disables the ISR
    /// left behind (zero for a correct ISR).
    @inline(__always)
    func leaveISR(_ saved: Int) -> Int {
        let value = word.current
        word.set(saved)
        return (value & Self.countMask) - (value >> 32)
    }
}

/// An enable without its disable: reported and ignored under the verifier; without one, a
/// programming error that stops the process (the interrupt state would be corrupted).
func refuseUnbalancedEnable(_ verifier: DriverVerifier?, _ context: ContextWord) {
    guard let verifier else {
        preconditionFailure("interrupts enabled more often than disabled on this thread (or an ISR enabled the interrupts the runtime disabled for it)")
    }
    verifier.unbalancedEnable(context: context.current, inISR: context.isInISR)
}
