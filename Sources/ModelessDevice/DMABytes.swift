import CModelessShim

/// A read-only, bounds-checked view of bytes in DMA memory, lent to a closure for the
/// duration of one call (``DMAPool/withBytes(of:count:_:)``): no copy, no allocation and no
/// reference counting. It cannot be copied, so it cannot outlive the call that lent it; the
/// memory is the device's again once that call returns.
///
/// An index outside `0..<count` traps, as an array's does.
public struct DMABytes: ~Copyable {
    private let base: UnsafeRawPointer
    /// How many bytes the view covers.
    public let count: Int

    init(base: UnsafeRawPointer, count: Int) {
        self.base = base
        self.count = count
    }

    /// The byte at `index`.
    @inline(__always)
    public subscript(index: Int) -> UInt8 {
        precondition(index >= 0 && index < count, "DMA bytes: index \(index) is outside 0..<\(count)")
        return base.load(fromByteOffset: index, as: UInt8.self)
    }

    /// The big-endian (network order) 16-bit value at `offset`.
    @inline(__always)
    public func bigEndian16(at offset: Int) -> UInt16 {
        UInt16(self[offset]) << 8 | UInt16(self[offset + 1])
    }

    /// Whether the bytes from `offset` equal `other`'s (false if `other` runs past the end).
    public func matches(_ other: [UInt8], at offset: Int = 0) -> Bool {
        guard offset >= 0, offset <= count - other.count else { return false }
        return other.withUnsafeBytes { other in
            other.count == 0 || memcmp(base + offset, other.baseAddress!, other.count) == 0
        }
    }

    /// Lends the bytes as a raw buffer for the duration of `body`, to hand them to a system
    /// call (`write(2)` to a TAP, a socket) without a copy. `body` must not keep the pointer.
    @inline(__always)
    public func withUnsafeBytes<Result>(_ body: (UnsafeRawBufferPointer) throws -> Result) rethrows -> Result {
        try body(UnsafeRawBufferPointer(start: base, count: count))
    }

    /// A copy of the bytes in an array (this allocates; for code that keeps a frame).
    public func copyToArray() -> [UInt8] {
        [UInt8](UnsafeRawBufferPointer(start: base, count: count))
    }
}

#if canImport(Glibc)
import Glibc
#endif
