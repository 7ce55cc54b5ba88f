import ModelessDevice
import ModelessModels
import Synchronization

/// A small device to learn with, in software: a countdown timer that raises an interrupt when
/// it reaches zero. docs/writing-a-driver.md builds its driver step by step.
///
/// Registers (BAR0, 16 bytes, 4-byte accesses): identification 0x7133_0001 at 0x00; count at
/// 0x04 (write N to count down N one-millisecond ticks); status at 0x08 (bit 0: running);
/// interrupt cause at 0x0C (bit 0: expired; write the bit to acknowledge it). One MSI vector,
/// or INTx, held asserted while a cause is pending.
public final class CountdownTimerModel: DeviceModel, @unchecked Sendable {
    /// BAR0 only, 16 bytes: the four 32-bit registers.
    public let barSizes = [0: 16]
    /// One INTx line or one MSI vector; no MSI-X.
    public let vectorCounts: [InterruptKind: Int] = [.intx: 1, .msi: 1]
    /// Configuration space of 256 bytes: vendor 1234, device 7133, class 0880 (other system
    /// peripheral), INTA, and an MSI capability with one vector at 0x40.
    public var initialConfigSpace: [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 256)
        bytes[0] = 0x34; bytes[1] = 0x12; bytes[2] = 0x33; bytes[3] = 0x71   // 1234:7133
        bytes[6] = 0x10                                                      // capability list
        bytes[0x0B] = 0x08; bytes[0x0A] = 0x80                               // class 0880: other system peripheral
        bytes[0x34] = 0x40
        bytes[0x3D] = 1                                                      // INTA
        bytes[0x40] = 0x05                                                   // MSI, one vector
        return bytes
    }

    private struct State {
        var ticksLeft: UInt32 = 0
        var causes: UInt32 = 0
        /// Bumped by each start, so that a stale tick of an earlier countdown does nothing.
        var generation = 0
    }

    private let state = Mutex(State())
    private let contextSlot = Mutex<ModelContext?>(nil)

    /// A stopped timer with no cause pending.
    public init() {}

    /// Keeps the context through which the model raises its interrupt; `ModeledDevice` calls it.
    public func connect(_ context: ModelContext) { contextSlot.withLock { $0 = context } }

    /// A register read of BAR0: the registers above for 4-byte accesses at their offsets, all ones
    /// for any other width or offset (as a real device answers an access it does not decode).
    public func read(bar: Int, offset: Int, width: Int) -> UInt64 {
        guard width == 4 else { return UInt64.max }
        return state.withLock { state in
            switch offset {
            case 0x00: UInt64(TimerIdentity.value)
            case 0x04: UInt64(state.ticksLeft)
            case 0x08: state.ticksLeft > 0 ? 1 : 0
            case 0x0C: UInt64(state.causes)
            default: UInt64(UInt32.max)
            }
        }
    }

    /// A register write of BAR0: a count at 0x04 starts a countdown of that many milliseconds (0
    /// stops it), a 1 in bit 0 at 0x0C acknowledges the expiry; other writes are ignored.
    public func write(bar: Int, offset: Int, width: Int, value: UInt64) {
        guard width == 4 else { return }
        let context = contextSlot.withLock { $0 }
        switch offset {
        case 0x04:
            let generation = state.withLock { state in
                state.ticksLeft = UInt32(truncatingIfNeeded: value)
                state.generation += 1
                return state.generation
            }
            if value > 0 { context?.schedule(after: .milliseconds(1)) { [weak self] in self?.tick(generation) } }
        case 0x0C:
            let cleared = state.withLock { state in
                state.causes &= ~UInt32(truncatingIfNeeded: value)
                return state.causes == 0
            }
            if cleared { context?.lowerInterrupt() }
        default:
            break
        }
    }

    private func tick(_ generation: Int) {
        let context = contextSlot.withLock { $0 }
        let outcome = state.withLock { state -> (expired: Bool, again: Bool) in
            guard state.generation == generation, state.ticksLeft > 0 else { return (false, false) }
            state.ticksLeft -= 1
            if state.ticksLeft > 0 { return (false, true) }
            state.causes |= TimerCauses.expired.rawValue
            return (true, false)
        }
        if outcome.again { context?.schedule(after: .milliseconds(1)) { [weak self] in self?.tick(generation) } }
        if outcome.expired { context?.raiseInterrupt() }
    }
}
