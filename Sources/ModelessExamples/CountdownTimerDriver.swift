import ModelessDevice
import ModelessRuntime

/// The driver docs/writing-a-driver.md builds: it starts countdowns on a
/// ``CountdownTimerModel`` (or a real device with the same registers) and waits for them to
/// expire, by interrupt, the same way in user mode and in the kernel emulation.
///
/// The ISR's acknowledge routine reads and clears the device's causes; the real ISR adds them
/// to the causes shared with waiters, under a spin lock, and queues a DPC; the DPC signals the
/// event the waiters sleep on. Nothing in the ISR or DPC sleeps or allocates.
public final class CountdownTimerDriver: @unchecked Sendable {
    /// Why the driver could not do what it was asked.
    public enum Failure: Error, Equatable, CustomStringConvertible {
        case notATimer(identification: UInt32)
        case timedOut

        /// What went wrong, with the identification found or the wait that ran out.
        public var description: String {
            switch self {
            case .notATimer(let identification):
                "not a countdown timer: identification 0x\(String(identification, radix: 16)), expected 0x\(String(TimerIdentity.value, radix: 16))"
            case .timedOut: "the countdown did not expire in time"
            }
        }
    }

    private let device: any DeviceAccess
    private let runtime: any DriverRuntime
    private let registers: MMIORegion
    /// Expirations the ISR saw and no waiter has taken yet: shared with the ISR.
    private let expirations: SpinLock<Int>
    private let expired: WaitEvent
    private var wake: DeferredProcedureCall?
    private var attachment: InterruptAttachment?

    /// Checks the device, brings it to a known state, and attaches the ISR.
    public init(device: any DeviceAccess, runtime: any DriverRuntime, interrupt: InterruptKind = .msi) throws {
        self.device = device
        self.runtime = runtime
        registers = try device.region(0)
        let identification = registers.load(TimerRegister.identification)
        guard identification == TimerIdentity.value else { throw Failure.notATimer(identification: identification) }
        expirations = runtime.makeSpinLock("timer.expirations", 0)
        expired = runtime.makeWaitEvent("timer.expired")

        // A clean start: stop any countdown a predecessor left running, acknowledge its causes.
        registers.store(0, to: TimerRegister.count)
        registers.store(registers.load(TimerRegister.interruptCause), to: TimerRegister.interruptCause)

        let vector = try device.enableInterrupts(interrupt, count: 1)[0]
        let wake = runtime.makeDPC("timer wake") { [expired] in expired.signal() }
        self.wake = wake
        let registers = self.registers
        let expirations = self.expirations
        attachment = try runtime.attachInterrupt(
            vector, name: "timer",
            acknowledge: {
                let causes = registers.load(TimerRegister.interruptCause)
                if causes != 0 { registers.store(causes, to: TimerRegister.interruptCause) }
                return UInt64(causes)
            },
            isr: { causes in
                guard TimerCauses(rawValue: UInt32(truncatingIfNeeded: causes)).contains(.expired) else { return }
                expirations.withLock { $0 += 1 }
                wake.queue()
            })
    }

    /// Starts a countdown of `ticks` milliseconds and waits, at passive level, for it to expire.
    public func countDown(milliseconds ticks: UInt32, timeout: Duration = .seconds(5)) throws {
        try runtime.mightSleep("waiting for the countdown")
        expirations.withLock { $0 = 0 }
        registers.store(ticks, to: TimerRegister.count)
        let done = expired.wait(timeout: timeout) {
            expirations.withLock { count in
                guard count > 0 else { return false }
                count -= 1
                return true
            }
        }
        guard done else { throw Failure.timedOut }
    }

    /// Whether a countdown is running.
    public var isRunning: Bool { TimerStatus(rawValue: registers.load(TimerRegister.status)).contains(.running) }

    /// Detaches the ISR, then disables the device's interrupts.
    public func stop() {
        if let attachment { runtime.detachInterrupt(attachment) }
        attachment = nil
        try? device.disableInterrupts()
    }
}
