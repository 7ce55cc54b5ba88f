import CModelessShim
import ModelessBus
import Synchronization

/// Fixed-size DMA chunks carved from one buffer, for descriptor rings and packet or data
/// buffers: allocation is taking an index off a free stack, with no per-chunk object or
/// reference counting (the hot paths of a driver never allocate).
///
/// A chunk is a plain value (its index); the pool does the bounds-checked accesses.
public final class DMAPool: @unchecked Sendable {
    /// One chunk of the pool: an index, its device address and its size.
    public struct Chunk: Hashable, Sendable {
        /// The chunk's position in the pool, from 0.
        public let index: Int
        /// The address the device uses for the chunk's first byte.
        public let deviceAddress: UInt64
    }

    /// Bytes per chunk.
    public let chunkSize: Int
    /// How many chunks the pool has.
    public let capacity: Int
    /// The memory all chunks live in.
    public let buffer: DMABuffer
    private let free: Mutex<[Int]>

    /// A pool of `count` chunks of `chunkSize` bytes (rounded up to 64-byte cache lines) on `device`.
    public init(device: any DeviceAccess, chunkSize: Int, count: Int) throws(DeviceError) {
        guard chunkSize > 0, count > 0 else {
            throw DeviceError(.outOfRange, device.address, "a DMA pool needs a positive chunk size and count")
        }
        self.chunkSize = (chunkSize + 63) / 64 * 64
        self.capacity = count
        buffer = try device.allocateDMA(size: self.chunkSize * count)
        free = Mutex(Array((0..<count).reversed()))
    }

    /// How many chunks are free.
    public var available: Int { free.withLock { $0.count } }

    /// Takes a free chunk, or `nil` when all are in use.
    public func allocate() -> Chunk? {
        guard let index = free.withLock({ $0.popLast() }) else { return nil }
        return chunk(index)
    }

    /// Gives a chunk back.
    public func release(_ chunk: Chunk) {
        precondition(chunk.index >= 0 && chunk.index < capacity, "chunk \(chunk.index) is not from this pool")
        free.withLock { $0.append(chunk.index) }
    }

    /// Chunk `index`, whether free or not (for rings that own fixed slots).
    public func chunk(_ index: Int) -> Chunk {
        Chunk(index: index, deviceAddress: buffer.deviceAddress + UInt64(index * chunkSize))
    }

    /// Reads the 32-bit value at `offset` in `chunk` (bounds-checked against the chunk).
    public func load32(_ chunk: Chunk, at offset: Int) throws(DeviceError) -> UInt32 {
        try buffer.load32(at: try position(chunk, offset, 4))
    }

    /// Writes the 32-bit `value` at `offset` in `chunk` (bounds-checked against the chunk).
    public func store32(_ value: UInt32, _ chunk: Chunk, at offset: Int) throws(DeviceError) {
        try buffer.store32(value, at: try position(chunk, offset, 4))
    }

    /// Reads the 64-bit value at `offset` in `chunk` (bounds-checked against the chunk).
    public func load64(_ chunk: Chunk, at offset: Int) throws(DeviceError) -> UInt64 {
        try buffer.load64(at: try position(chunk, offset, 8))
    }

    /// Writes the 64-bit `value` at `offset` in `chunk` (bounds-checked against the chunk).
    public func store64(_ value: UInt64, _ chunk: Chunk, at offset: Int) throws(DeviceError) {
        try buffer.store64(value, at: try position(chunk, offset, 8))
    }

    /// Copies bytes into a chunk.
    public func write(_ bytes: [UInt8], to chunk: Chunk, at offset: Int = 0) throws(DeviceError) {
        try buffer.write(bytes, at: try position(chunk, offset, bytes.count))
    }

    /// Copies bytes out of a chunk.
    public func read(_ count: Int, from chunk: Chunk, at offset: Int = 0) throws(DeviceError) -> [UInt8] {
        try buffer.read(count, at: try position(chunk, offset, count))
    }

    /// Lends a read-only view of the first `count` bytes of `chunk` to `body`, after a read
    /// barrier (so the view sees what the device wrote before it set a status the caller read).
    /// No copy and no allocation; the view is valid only during the call.
    @inline(__always)
    public func withBytes<Result>(of chunk: Chunk, count: Int, _ body: (borrowing DMABytes) -> Result) throws(DeviceError) -> Result {
        let offset = try position(chunk, 0, count)
        let start = try buffer.pointer(at: offset, count: count)
        modeless_read_barrier()
        return body(DMABytes(base: UnsafeRawPointer(start), count: count))
    }

    /// Lends a writer over the first `capacity` bytes of `chunk` to `body` (which fills it in
    /// place), then issues a write barrier so the bytes reach memory before any later doorbell.
    /// Returns what `body` returned and how many bytes it wrote (``DMAByteWriter/count``).
    @inline(__always)
    @inlinable
    public func withWriter<Result>(of chunk: Chunk, capacity: Int,
                                   _ body: (inout DMAByteWriter) -> Result) throws(DeviceError) -> (result: Result, count: Int) {
        let offset = try position(chunk, 0, capacity)
        var writer = DMAByteWriter(base: try buffer.pointer(at: offset, count: capacity), capacity: capacity)
        let result = body(&writer)
        modeless_write_barrier()
        return (result, writer.count)
    }

    @inlinable @inline(__always)
    func position(_ chunk: Chunk, _ offset: Int, _ count: Int) throws(DeviceError) -> Int {
        guard _fastPath(chunk.index >= 0 && chunk.index < capacity && offset >= 0 && count >= 0 && offset <= chunkSize &- count) else {
            throw positionFailure(chunk, offset, count)
        }
        return chunk.index &* chunkSize &+ offset
    }

    @usableFromInline @inline(never)
    func positionFailure(_ chunk: Chunk, _ offset: Int, _ count: Int) -> DeviceError {
        DeviceError(.outOfRange, buffer.device,
                    "DMA pool: \(count) bytes at \(offset) of chunk \(chunk.index) are outside its \(chunkSize) bytes")
    }
}
