import ArgumentParser
import ModelessBus
import ModelessDevice
import ModelessRuntime

/// What every `run` and `bench` command on a bound device does around its own work: resolve
/// the device the person named, open it with the backend its driver calls for, start a runtime
/// in `mode`, run `body`, and release everything. A bad name exits with its documented code;
/// the device's removal (the driver's remove routine or datapath found it gone) ends with 0
/// once the device is released; any other failure prints what went wrong and exits with 1.
package func withBoundDevice(_ text: String, mode: ExecutionMode, options: DeviceOpener.Options = .init(),
                     verifier: DriverVerifier? = nil, _ body: (PCIAddress, any DeviceAccess, any DriverRuntime) throws -> Void) throws {
    let address: PCIAddress
    do { address = try PCIBus().resolve(try DeviceSelector(parsing: text)).address } catch { throw ExitStatus.fail(error) }
    do {
        let access = try DeviceOpener.open(address, options: options)
        defer { access.close() }
        let runtime = try makeRuntime(mode, options: RuntimeOptions(verifier: verifier))
        defer { runtime.shutdown() }
        do {
            try body(address, access, runtime)
        } catch where reportRemoval(error) {
            return
        }
    } catch let exit as ExitCode {
        throw exit
    } catch {
        printError("\(error)")
        throw ExitCode(1)
    }
}
