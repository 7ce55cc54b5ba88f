import ModelessDevice
import ModelessDrivers
import ModelessModels
import ModelessRuntime
import Testing

/// A started NVMe controller on a model, under a runtime with a ``DriverVerifier``; the
/// verifier must have no report when the body and the controller's stop are over, unless
/// `expectedReports` says how many the body provokes on purpose.
func withVerifiedNVMe(_ mode: ExecutionMode = .user, _ completion: NVMeController.Completion = .msix,
                      model: NVMeModel = NVMeModel(), timeout: Duration = .seconds(5), expectedReports: Int = 0,
                      ioQueueLimit: Int? = nil, _ body: (NVMeController, NVMeModel, ModeledDevice) throws -> Void) throws {
    let device = try ModeledDevice(model)
    defer { device.close() }
    let verifier = DriverVerifier()
    let runtime = try makeRuntime(mode, options: RuntimeOptions(verifier: verifier))
    defer { runtime.shutdown() }
    do {
        let controller = try NVMeController(device: device, runtime: runtime, completion: completion, commandTimeout: timeout,
                                           ioQueueLimit: ioQueueLimit)
        defer { controller.stop() }
        try body(controller, model, device)
    }
    #expect(verifier.reports.count == expectedReports, "\(verifier.reports)")
}
