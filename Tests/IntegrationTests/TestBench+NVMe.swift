import ModelessBus
import ModelessDevice
import ModelessDrivers
import ModelessRuntime
import Testing

extension TestBench {
    /// Runs `body` with the NVMe sample driver started on the guest's NVMe controller.
    ///
    /// Binds the controller to vfio-pci (forced: the guest's kernel driver may hold it), opens
    /// it, starts a runtime of `mode` with a ``DriverVerifier`` and an ``NVMeController`` whose
    /// completions arrive as `completion` says. On every path the controller is stopped, the
    /// runtime shut down, the device closed and the controller unbound again; after `body`
    /// returns the verifier must have reported nothing (a kernel-rule violation fails the test).
    static func withNVMeController(_ mode: ExecutionMode, _ completion: NVMeController.Completion,
                                   _ body: (NVMeController) throws -> Void) throws {
        let nvme = try TestBench.nvme()
        let binder = PCIBinder()
        _ = try binder.bind(.address(nvme), to: .vfioPCI, force: true)
        defer { _ = try? binder.unbind(.address(nvme)) }
        let device = try DeviceOpener.open(nvme)
        defer { device.close() }
        let verifier = DriverVerifier()
        let runtime = try makeRuntime(mode, options: RuntimeOptions(verifier: verifier))
        defer { runtime.shutdown() }
        do {
            let controller = try NVMeController(device: device, runtime: runtime, completion: completion)
            defer { controller.stop() }
            try body(controller)
        }
        #expect(verifier.reports.isEmpty, "\(verifier.reports)")
    }
}
