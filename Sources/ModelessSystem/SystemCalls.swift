import CModelessShim

#if canImport(Glibc)
import Glibc
#endif

/// The system calls device backends make, behind one protocol so that tests can substitute
/// an in-process kernel (recording calls, faking VFIO, injecting failures).
///
/// Each method returns the raw result and `errno` convention of its C call (-1 and `errno`,
/// or `MAP_FAILED`); ``checked(_:_:_:)`` and the other methods of its extension turn that into
/// ``SystemError``.
public protocol SystemCalls: Sendable {
    /// `open(2)`: a descriptor, or -1 with `errno` set.
    func open(_ path: String, _ flags: Int32, _ mode: mode_t) -> Int32
    /// `close(2)`: 0, or -1 with `errno` set.
    func close(_ fd: Int32) -> Int32
    /// `ioctl(2)` with a pointer argument (a VFIO structure the kernel reads or fills): the
    /// request's result, or -1 with `errno` set.
    func ioctl(_ fd: Int32, _ request: UInt, _ argument: UnsafeMutableRawPointer?) -> Int32
    /// `ioctl(2)` with an integer argument (`VFIO_GROUP_SET_CONTAINER`'s descriptor, an IOMMU type).
    func ioctl(_ fd: Int32, _ request: UInt, value: UInt) -> Int32
    /// `mmap(2)` of `length` bytes at `offset` in `fd`, anywhere in the address space; nil where C
    /// returns `MAP_FAILED`, with `errno` set.
    func mmap(_ length: Int, _ protection: Int32, _ flags: Int32, _ fd: Int32, _ offset: Int64) -> UnsafeMutableRawPointer?
    /// `munmap(2)`: 0, or -1 with `errno` set.
    func munmap(_ address: UnsafeMutableRawPointer, _ length: Int) -> Int32
    /// `pread(2)`: bytes read (0 at the end), or -1 with `errno` set.
    func pread(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int, _ offset: Int64) -> Int
    /// `pwrite(2)`: bytes written, or -1 with `errno` set.
    func pwrite(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int, _ offset: Int64) -> Int
    /// `read(2)`: bytes read (0 at the end), or -1 with `errno` set.
    func read(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int) -> Int
    /// `write(2)`: bytes written, or -1 with `errno` set.
    func write(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Int
    /// `eventfd(2)` with counter `initial` and `EFD_*` flags: a descriptor, or -1 with `errno` set.
    func eventfd(_ initial: UInt32, _ flags: Int32) -> Int32
    /// Reads `errno` right after a failed call. Substitutes set it themselves.
    func lastError() -> Errno
}

/// The running kernel.
public struct LinuxSystemCalls: SystemCalls {
    /// The system calls of the running kernel; the value holds nothing.
    public init() {}

    /// Glibc's `open`.
    public func open(_ path: String, _ flags: Int32, _ mode: mode_t) -> Int32 { Glibc.open(path, flags, mode) }
    /// Glibc's `close`.
    public func close(_ fd: Int32) -> Int32 { Glibc.close(fd) }
    /// `ioctl` through the C shim (Swift cannot call the variadic C function).
    public func ioctl(_ fd: Int32, _ request: UInt, _ argument: UnsafeMutableRawPointer?) -> Int32 {
        modeless_ioctl_ptr(fd, request, argument)
    }
    /// `ioctl` with an integer argument, through the C shim.
    public func ioctl(_ fd: Int32, _ request: UInt, value: UInt) -> Int32 { modeless_ioctl_int(fd, request, value) }
    /// Glibc's `mmap`, with `MAP_FAILED` made nil.
    public func mmap(_ length: Int, _ protection: Int32, _ flags: Int32, _ fd: Int32, _ offset: Int64) -> UnsafeMutableRawPointer? {
        let result = Glibc.mmap(nil, length, protection, flags, fd, Int(offset))
        return result == MAP_FAILED ? nil : result
    }
    /// Glibc's `munmap`.
    public func munmap(_ address: UnsafeMutableRawPointer, _ length: Int) -> Int32 { Glibc.munmap(address, length) }
    /// Glibc's `pread`.
    public func pread(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int, _ offset: Int64) -> Int {
        Glibc.pread(fd, buffer, count, Int(offset))
    }
    /// Glibc's `pwrite`.
    public func pwrite(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int, _ offset: Int64) -> Int {
        Glibc.pwrite(fd, buffer, count, Int(offset))
    }
    /// Glibc's `read`.
    public func read(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int) -> Int { Glibc.read(fd, buffer, count) }
    /// Glibc's `write`.
    public func write(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Int { Glibc.write(fd, buffer, count) }
    /// `eventfd` through the C shim.
    public func eventfd(_ initial: UInt32, _ flags: Int32) -> Int32 { modeless_eventfd(initial, flags) }
    /// The calling thread's `errno`, read before anything else can change it.
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
