import CModelessShim

#if canImport(Glibc)
import Glibc
#endif

/// A file mapped shared into memory: what one process stores there, other processes mapping
/// the same file see at once, and it outlives the process (a SIGKILL loses nothing already
/// stored). Every access is bounds-checked; the mapping and the file descriptor are released
/// by ``close()`` or when the value is released.
public final class SharedMemoryFile: @unchecked Sendable {
    /// The mapped file's path, which other processes open to share the memory.
    public let path: String
    /// The mapping's length in bytes, the file's size; every access must fall inside it.
    public let size: Int
    private let base: UnsafeMutableRawPointer
    private var isClosed = false

    /// Maps `path`, creating it (mode 0600) with `size` zero bytes if it does not exist. An
    /// existing file must already be exactly `size` bytes (a file of another size is an error,
    /// not silently resized). With `readOnly` the file must exist and is never written.
    public init(path: String, size: Int, readOnly: Bool = false) throws(SystemError) {
        precondition(size > 0, "a shared memory file needs a size")
        self.path = path
        self.size = size
        let fd = try systemCall("open", path) { open(path, readOnly ? O_RDONLY | O_CLOEXEC : O_RDWR | O_CREAT | O_CLOEXEC, 0o600) }
        defer { Glibc.close(fd) }
        var status = stat()
        _ = try systemCall("fstat", path) { fstat(fd, &status) }
        if status.st_size == 0 && !readOnly {
            _ = try systemCall("ftruncate", path) { ftruncate(fd, off_t(size)) }
        } else if Int(status.st_size) != size {
            throw SystemError("map \(size) bytes of (the file has \(status.st_size))", path, errno: .invalidArgument)
        }
        let protection = readOnly ? PROT_READ : PROT_READ | PROT_WRITE
        guard let address = mmap(nil, size, protection, MAP_SHARED, fd, 0), address != MAP_FAILED else {
            throw SystemError("mmap", path, errno: .current)
        }
        base = address
    }

    deinit { close() }

    /// Unmaps the file. Later accesses are programming errors.
    public func close() {
        guard !isClosed else { return }
        isClosed = true
        munmap(base, size)
    }

    @inline(__always)
    private func check(_ offset: Int, _ count: Int) {
        precondition(!isClosed && offset >= 0 && count >= 0 && offset <= size - count,
                     "bytes \(offset)..<\(offset + count) are outside the \(size)-byte shared file \(path)")
    }

    /// Loads a fixed-width integer at `offset` (any alignment).
    public func load<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        check(offset, MemoryLayout<T>.size)
        return T(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: T.self))
    }

    /// Stores a fixed-width integer at `offset` (any alignment).
    public func store<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        check(offset, MemoryLayout<T>.size)
        base.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
    }

    /// Loads 8 bytes at an 8-byte aligned `offset` with acquire ordering: what was stored
    /// before the matching ``storeRelease(_:at:)`` is visible after it.
    public func loadAcquire(at offset: Int) -> UInt64 {
        check(offset, 8)
        precondition(offset % 8 == 0, "atomic accesses need 8-byte alignment, not offset \(offset)")
        return modeless_load_acquire64(base + offset)
    }

    /// Stores 8 bytes at an 8-byte aligned `offset` with release ordering: a reader that sees
    /// this value also sees every store made before it. A process killed mid-update leaves
    /// either the old or the new value here, never a mixture.
    public func storeRelease(_ value: UInt64, at offset: Int) {
        check(offset, 8)
        precondition(offset % 8 == 0, "atomic accesses need 8-byte alignment, not offset \(offset)")
        modeless_store_release64(base + offset, value)
    }

    /// Copies `count` bytes from `offset`.
    public func read(at offset: Int, count: Int) -> [UInt8] {
        check(offset, count)
        return [UInt8](UnsafeRawBufferPointer(start: base + offset, count: count))
    }

    /// Copies `bytes` to `offset`.
    public func write(_ bytes: some Collection<UInt8>, at offset: Int) {
        check(offset, bytes.count)
        let copied: Void? = bytes.withContiguousStorageIfAvailable { source in
            guard let start = source.baseAddress else { return }
            (base + offset).copyMemory(from: start, byteCount: source.count)
        }
        if copied != nil { return }
        var position = offset
        for byte in bytes {
            base.storeBytes(of: byte, toByteOffset: position, as: UInt8.self)
            position += 1
        }
    }

    /// Whether `path` exists.
    public static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }
}
