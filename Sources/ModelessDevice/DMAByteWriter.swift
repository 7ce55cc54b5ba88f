/// A bounds-checked writer that fills DMA memory in place, lent to a closure for one call
/// (``DMAPool/withWriter(of:capacity:_:)``): bytes go straight into the buffer the device will
/// read, with no intermediate array, allocation or reference counting. It cannot be copied,
/// so it cannot outlive the call that lent it.
///
/// ``count`` is how many bytes have been written from the start (the highest position written
/// plus one). Writing past ``capacity`` traps, as an array's out-of-range subscript does.
public struct DMAByteWriter: ~Copyable {
    @usableFromInline let base: UnsafeMutableRawPointer
    /// How many bytes may be written.
    public let capacity: Int
    /// The length of what was written: one past the highest byte written.
    public var count: Int { written }
    @usableFromInline var written = 0

    @usableFromInline
    init(base: UnsafeMutableRawPointer, capacity: Int) {
        self.base = base
        self.capacity = capacity
    }

    @inlinable @inline(__always)
    mutating func reserve(_ offset: Int, _ width: Int) {
        precondition(offset >= 0 && width >= 0 && offset <= capacity &- width,
                     "DMA writer: \(width) bytes at \(offset) are outside its \(capacity) bytes")
        written = max(written, offset &+ width)
    }

    /// Sets the byte at `offset`.
    @inlinable @inline(__always)
    public mutating func set(_ value: UInt8, at offset: Int) {
        reserve(offset, 1)
        base.storeBytes(of: value, toByteOffset: offset, as: UInt8.self)
    }

    /// Sets a big-endian (network order) 16-bit value at `offset`.
    @inlinable @inline(__always)
    public mutating func setBigEndian16(_ value: UInt16, at offset: Int) {
        reserve(offset, 2)
        base.storeBytes(of: value.bigEndian, toByteOffset: offset, as: UInt16.self)
    }

    /// Sets a big-endian (network order) 32-bit value at `offset`.
    @inlinable @inline(__always)
    public mutating func setBigEndian32(_ value: UInt32, at offset: Int) {
        reserve(offset, 4)
        base.storeBytes(of: value.bigEndian, toByteOffset: offset, as: UInt32.self)
    }

    /// Copies `bytes` to `offset`.
    @inlinable
    public mutating func set(_ bytes: [UInt8], at offset: Int) {
        reserve(offset, bytes.count)
        bytes.withUnsafeBytes { source in
            if let start = source.baseAddress { (base + offset).copyMemory(from: start, byteCount: source.count) }
        }
    }

    /// Copies the bytes of `source` (memory outside an array, such as a frame a system call
    /// read) to `offset`.
    @inlinable
    public mutating func copy(from source: UnsafeRawBufferPointer, at offset: Int) {
        reserve(offset, source.count)
        if let start = source.baseAddress { (base + offset).copyMemory(from: start, byteCount: source.count) }
    }

    /// Sets `length` bytes from `offset` to `value`.
    @inlinable
    public mutating func fill(_ value: UInt8, at offset: Int, length: Int) {
        reserve(offset, length)
        (base + offset).initializeMemory(as: UInt8.self, repeating: value, count: length)
    }
}
