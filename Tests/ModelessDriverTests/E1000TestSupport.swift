import ModelessDevice
import ModelessDrivers
import ModelessModels
import ModelessRuntime
import Testing

/// A runtime for `mode` checked by a fresh ``DriverVerifier``; `body` runs with it, then the
/// runtime shuts down and the test expects no report.
@discardableResult
func withVerifiedRuntime<Result>(_ mode: ExecutionMode, _ body: (any DriverRuntime) throws -> Result) throws -> Result {
    let verifier = DriverVerifier()
    let runtime = try makeRuntime(mode, options: RuntimeOptions(verifier: verifier))
    defer {
        runtime.shutdown()
        #expect(verifier.reports.isEmpty, "\(verifier.reports)")
    }
    return try body(runtime)
}

/// An e1000 driver on `model` under a verified runtime: the device is opened, the driver
/// started with `receive`, and everything stopped and closed after `body`.
func withE1000(_ mode: ExecutionMode, _ receive: E1000Driver.ReceiveMode, model: E1000Model = E1000Model(),
               ringSize: Int = 32, budget: Int = 64, _ body: (E1000Driver, E1000Model, any DriverRuntime) throws -> Void) throws {
    let device = try ModeledDevice(model)
    defer { device.close() }
    try withVerifiedRuntime(mode) { runtime in
        let driver = try E1000Driver(device: device, runtime: runtime, receive: receive, ringSize: ringSize, receiveBudget: budget)
        defer { driver.stop() }
        try body(driver, model, runtime)
    }
}
