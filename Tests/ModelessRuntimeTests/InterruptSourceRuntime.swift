import ModelessDevice
import ModelessModels
import ModelessRuntime

/// Runs `body` with a runtime in `mode` under a fresh verifier and one MSI vector of a bare
/// interrupt source (a device model that only raises interrupts), then shuts both down: what
/// the interrupt tests attach their ISRs and DPCs to.
func withInterruptSource(_ mode: ExecutionMode, options: RuntimeOptions = RuntimeOptions(),
                         _ body: (any DriverRuntime, InterruptVector, DriverVerifier) throws -> Void) throws {
    let device = try ModeledDevice(InterruptSourceModel())
    defer { device.close() }
    let verifier = DriverVerifier()
    var options = options
    options.verifier = verifier
    let runtime = try makeRuntime(mode, options: options)
    defer { runtime.shutdown() }
    let vector = try device.enableInterrupts(.msi, count: 1)[0]
    try body(runtime, vector, verifier)
}
