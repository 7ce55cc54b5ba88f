import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A failed system call: which operation, on what, and the `errno` it set.
///
/// Every system call in Modeless reports failure this way, so a message always says what
/// was being done to which file or device, for example
/// `write /sys/bus/pci/drivers_probe: Permission denied (errno 13)`.
public struct SystemError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The operation that failed, named after the system call or its purpose (`open`, `write`, `readlink`).
    public var operation: String
    /// The file, device or object the operation acted on.
    public var subject: String
    /// The error number the kernel returned.
    public var errno: Errno

    /// The failure of `operation` on `subject` with `errno`; callers pass `Errno.current` right
    /// after the failed call.
    public init(_ operation: String, _ subject: String, errno: Errno) {
        self.operation = operation
        self.subject = subject
        self.errno = errno
    }

    /// `operation subject: message (errno N)`, e.g.
    /// `open /dev/vfio/12: Device or resource busy (errno 16)`.
    public var description: String {
        "\(operation) \(subject): \(errno.description) (errno \(errno.rawValue))"
    }
}

extension Errno {
    /// The calling thread's current `errno`, read once right after a failing call.
    @inline(never)
    public static var current: Errno { Errno(rawValue: Glibc.errno) }
}

/// Runs a system call that returns -1 and sets `errno` on failure, retrying on `EINTR`.
///
/// The closure must be the raw call and nothing else: `errno` is read immediately after it,
/// before any other code can overwrite it (hence `@inline(never)`).
@inline(never)
public func systemCall<Result: FixedWidthInteger>(
    _ operation: String, _ subject: String, _ call: () -> Result
) throws(SystemError) -> Result {
    while true {
        let result = call()
        if result != -1 { return result }
        let error = Errno.current
        if error == .interrupted { continue }
        throw SystemError(operation, subject, errno: error)
    }
}

/// The kernel's error numbers as Swift values (swift-system's `Errno`), re-exported so that
/// layers above name them without depending on swift-system themselves.
public typealias Errno = SystemPackage.Errno
