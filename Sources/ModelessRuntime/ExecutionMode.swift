/// Where a driver runs. Chosen when the driver is launched; drivers may log it but never
/// branch on it.
public enum ExecutionMode: String, Sendable, CaseIterable, CustomStringConvertible {
    /// A user process: interrupts arrive as eventfd notifications and reach the driver's ISR
    /// through the wait thread under the interrupt lock's write side.
    case user
    /// The in-tree kernel emulation: an emulated interrupt controller calls the ISR directly
    /// at interrupt level, and disabling interrupts masks the controller.
    case kernelEmulation = "kernel-emulation"

    /// `user` or `kernel-emulation`, as the command line spells it.
    public var description: String { rawValue }
}
