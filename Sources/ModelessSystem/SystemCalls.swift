import CModelessShim

#if canImport(Glibc)
import Glibc
#endif

/// The system calls device backends make, behind one protocol so that tests can substitute
/// an in-process kernel (recording calls, faking VFIO, injecting failures).
///
/// Each method returns the raw result and `errno` convention of its C call (-1 and `errno`,
/// or `MAP_FAILED`); ``SystemCallsExtensions`` turns that into ``SystemError``.
public protocol SystemCalls: Sendable {
    func open(_ path: String, _ flags: Int32, _ mode: mode_t) -> Int32
    func close(_ fd: Int32) -> Int32
    func ioctl(_ fd: Int32, _ request: UInt, _ argument: UnsafeMutableRawPointer?) -> Int32
    func ioctl(_ fd: Int32, _ request: UInt, value: UInt) -> Int32
    func mmap(_ length: Int, _ protection: Int32, _ flags: Int32, _ fd: Int32, _ offset: Int64) -> UnsafeMutableRawPointer?
    func munmap(_ address: UnsafeMutableRawPointer, _ length: Int) -> Int32
    func pread(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int, _ offset: Int64) -> Int
    func pwrite(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int, _ offset: Int64) -> Int
    func read(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int) -> Int
    func write(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Int
    func eventfd(_ initial: UInt32, _ flags: Int32) -> Int32
    /// Reads `errno` right after a failed call. Substitutes set it themselves.
    func lastError() -> Errno
}

/// The running kernel.
public struct LinuxSystemCalls: SystemCalls {
    public init() {}

    public func open(_ path: String, _ flags: Int32, _ mode: mode_t) -> Int32 { Glibc.open(path, flags, mode) }
    public func close(_ fd: Int32) -> Int32 { Glibc.close(fd) }
    public func ioctl(_ fd: Int32, _ request: UInt, _ argument: UnsafeMutableRawPointer?) -> Int32 {
        modeless_ioctl_ptr(fd, request, argument)
    }
    public func ioctl(_ fd: Int32, _ request: UInt, value: UInt) -> Int32 { modeless_ioctl_int(fd, request, value) }
    public func mmap(_ length: Int, _ protection: Int32, _ flags: Int32, _ fd: Int32, _ offset: Int64) -> UnsafeMutableRawPointer? {
        let result = Glibc.mmap(nil, length, protection, flags, fd, Int(offset))
        return result == MAP_FAILED ? nil : result
    }
    public func munmap(_ address: UnsafeMutableRawPointer, _ length: Int) -> Int32 { Glibc.munmap(address, length) }
    public func pread(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int, _ offset: Int64) -> Int {
        Glibc.pread(fd, buffer, count, Int(offset))
    }
    public func pwrite(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int, _ offset: Int64) -> Int {
        Glibc.pwrite(fd, buffer, count, Int(offset))
    }
    public func read(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int) -> Int { Glibc.read(fd, buffer, count) }
    public func write(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Int { Glibc.write(fd, buffer, count) }
    public func eventfd(_ initial: UInt32, _ flags: Int32) -> Int32 { modeless_eventfd(initial, flags) }
    public func lastError() -> Errno { .current }
}

extension SystemCalls {
    /// Runs `call` until it does not fail with `EINTR`; a result of -1 becomes ``SystemError``.
    @inline(__always)
    public func checked<Result: FixedWidthInteger>(_ operation: String, _ subject: String,
                                            _ call: () -> Result) throws(SystemError) -> Result {
        while true {
            let result = call()
            if result != -1 { return result }
            let error = lastError()
            if error == .interrupted { continue }
            throw SystemError(operation, subject, errno: error)
        }
    }

    /// `open(2)` with `O_CLOEXEC`.
    public func openFile(_ path: String, _ flags: Int32, mode: mode_t = 0) throws(SystemError) -> Int32 {
        try checked("open", path) { open(path, flags | O_CLOEXEC, mode) }
    }

    /// `ioctl(2)` with a pointer to `value`, which the kernel may read and update.
    public func ioctl<Value>(_ fd: Int32, _ request: UInt, _ value: inout Value,
                             _ operation: String, _ subject: String) throws(SystemError) -> Int32 {
        try checked(operation, subject) { withUnsafeMutableBytes(of: &value) { ioctl(fd, request, $0.baseAddress) } }
    }

    /// `ioctl(2)` with an integer argument.
    public func ioctl(_ fd: Int32, _ request: UInt, value: UInt,
                      _ operation: String, _ subject: String) throws(SystemError) -> Int32 {
        try checked(operation, subject) { ioctl(fd, request, value: value) }
    }

    /// `mmap(2)`; throws instead of returning `MAP_FAILED`.
    public func map(_ length: Int, protection: Int32, flags: Int32, fd: Int32, offset: Int64,
                    _ subject: String) throws(SystemError) -> UnsafeMutableRawPointer {
        guard let address = mmap(length, protection, flags, fd, offset) else {
            throw SystemError("mmap", subject, errno: lastError())
        }
        return address
    }

    /// `pread(2)` of exactly `count` bytes; a short read is an `EIO` error.
    public func readExactly(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: Int64,
                            _ subject: String) throws(SystemError) {
        let count = try checked("pread", subject) { pread(fd, buffer.baseAddress!, buffer.count, offset) }
        if count != buffer.count { throw SystemError("pread", "\(subject) (short read)", errno: .ioError) }
    }

    /// `pwrite(2)` of exactly `count` bytes; a short write is an `EIO` error.
    public func writeExactly(_ fd: Int32, from buffer: UnsafeRawBufferPointer, at offset: Int64,
                             _ subject: String) throws(SystemError) {
        let count = try checked("pwrite", subject) { pwrite(fd, buffer.baseAddress!, buffer.count, offset) }
        if count != buffer.count { throw SystemError("pwrite", "\(subject) (short write)", errno: .ioError) }
    }
}
