import ArgumentParser
import ModelessBus
import ModelessDevice
import ModelessRuntime
import ModelessServices

/// The console as hosted work's report, for the benchmarks' own sessions on a device.
struct ConsoleWork: HostedWork {
    var report: HostReport { .console }
}

/// What every `bench` command on a bound device does around its own work (as the hosted `run`
/// and `serve` do, ``HostedWork/withBoundDevice(_:mode:options:verifier:_:)``): resolve the
/// device the person named, open it with the backend its driver calls for, start a runtime in
/// `mode`, run `body`, and release everything. A bad name exits with its documented code;
/// the device's removal ends with 0 once the device is released; any other failure prints what
/// went wrong and exits with 1.
package func withBoundDevice(_ text: String, mode: ExecutionMode, options: DeviceOpener.Options = .init(),
                             verifier: DriverVerifier? = nil, _ body: (PCIAddress, any DeviceAccess, any DriverRuntime) throws -> Void) throws {
    try hosting { try ConsoleWork().withBoundDevice(text, mode: mode, options: options, verifier: verifier, body) }
}
