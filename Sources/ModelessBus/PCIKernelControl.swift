import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// The changes a binder asks of the kernel: writes to sysfs attributes and module loads.
///
/// ``LinuxKernelControl`` does them for real. Tests substitute a simulated kernel, so the
/// binding logic, its checks and its rollback run on any machine without touching real devices.
public protocol PCIKernelControl: Sendable {
    /// Writes `text` to a sysfs attribute in one `write(2)`.
    func write(_ text: String, to path: String) throws(SystemError)
    /// Whether the caller may write `path`.
    func isWritable(_ path: String) -> Bool
    /// Loads a kernel module with `modprobe`.
    func loadModule(_ name: String) -> ProgramResult
}

/// The running kernel, through sysfs and `modprobe`.
public struct LinuxKernelControl: PCIKernelControl {
    /// The running kernel; the value holds nothing.
    public init() {}

    /// Writes `text` to the sysfs file `path` (`bind`, `unbind`, `driver_override`, `new_id`).
    /// - Throws: `SystemError` with the kernel's `errno` when the write is refused.
    public func write(_ text: String, to path: String) throws(SystemError) {
        try FileAccess.writeText(text, to: path)
    }

    /// Whether this process may write `path` (`access(2)` with `W_OK`).
    public func isWritable(_ path: String) -> Bool {
        access(path, W_OK) == 0
    }

    /// Runs `modprobe name` and returns its status and output; a `modprobe` that cannot be started
    /// is reported as a failed result, not thrown.
    public func loadModule(_ name: String) -> ProgramResult {
        do {
            return try ProgramRunner.run("modprobe", [name])
        } catch {
            return ProgramResult(status: 127, output: "\(error)")
        }
    }
}
