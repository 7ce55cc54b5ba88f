import ModelessDevice

/// The countdown timer's registers (BAR0, 16 bytes), named once from its datasheet.
enum TimerRegister {
    /// Reads ``TimerIdentity/value``.
    static let identification = Register<UInt32>(0x00)
    /// Writing N starts a countdown of N one-millisecond ticks; reading gives the ticks left.
    static let count = Register<UInt32>(0x04)
    /// ``TimerStatus`` bits.
    static let status = Register<UInt32>(0x08)
    /// ``TimerCauses`` pending; writing a cause's bit acknowledges it.
    static let interruptCause = Register<UInt32>(0x0C)
}

/// The identification register's value.
enum TimerIdentity {
    static let value: UInt32 = 0x7133_0001
}

/// The status register.
struct TimerStatus: OptionSet, Sendable {
    let rawValue: UInt32
    /// A countdown is in progress.
    static let running = TimerStatus(rawValue: 1 << 0)
}

/// Interrupt causes.
struct TimerCauses: OptionSet, Sendable {
    let rawValue: UInt32
    /// A countdown reached zero.
    static let expired = TimerCauses(rawValue: 1 << 0)
}
