/// What a ublk device looks like to the kernel, as its backend reports it.
public struct UblkGeometry: Sendable, Equatable {
    /// The logical block size: a power of two from 512 to the page size.
    public var blockSize: Int
    /// The device's size in blocks.
    public var blockCount: UInt64
    /// The device has a write cache and answers flush (the kernel then sends flushes).
    public var flushes: Bool
    /// The device can zero a range without data (WRITE_ZEROES).
    public var writesZeroes: Bool
    /// The device can forget a range (DISCARD).
    public var discards: Bool

    /// A geometry of `blockCount` blocks of `blockSize` bytes (a power of two from 512 to the page
    /// size) offering the operations whose flags are true.
    public init(blockSize: Int, blockCount: UInt64, flushes: Bool, writesZeroes: Bool, discards: Bool) {
        self.blockSize = blockSize
        self.blockCount = blockCount
        self.flushes = flushes
        self.writesZeroes = writesZeroes
        self.discards = discards
    }

    /// The size in the kernel's 512-byte sectors.
    public var sectors: UInt64 { blockCount * UInt64(blockSize) / 512 }
}

/// One request from the kernel, as its descriptor gives it.
public struct UblkRequest: Sendable, Equatable {
    /// What the kernel asks for: read, write, flush, discard or write-zeroes.
    public var operation: UblkOperation
    /// The UBLK_IO_F_* flags (FUA, NOUNMAP, ...).
    public var flags: UInt32
    /// The first 512-byte sector.
    public var startSector: UInt64
    /// How many 512-byte sectors.
    public var sectorCount: UInt32

    /// A request as a queue decodes it from the tag's I/O descriptor; tests build them directly.
    public init(operation: UblkOperation, flags: UInt32, startSector: UInt64, sectorCount: UInt32) {
        self.operation = operation
        self.flags = flags
        self.startSector = startSector
        self.sectorCount = sectorCount
    }

    /// The request's length in bytes.
    public var byteCount: Int { Int(sectorCount) * 512 }
}

/// Serves a device's requests. The server makes one ``UblkQueueBackend`` per queue and
/// calls it only from that queue's thread.
public protocol UblkBackend: AnyObject {
    /// The device's size and capabilities, fixed while it is exported; an error when the
    /// backend cannot serve (a device that failed to start).
    var geometry: UblkGeometry { get throws(UblkError) }
    /// The largest request the backend takes, in bytes (a multiple of the block size).
    var maximumIOBytes: Int { get }
    /// A backend for queue `queue`, used by that queue's thread only.
    func makeQueueBackend(queue: Int) throws(UblkError) -> any UblkQueueBackend
}

/// One queue's view of the backend.
public protocol UblkQueueBackend: AnyObject {
    /// Performs `request` with its data in `buffer` (a write's data is there; a read's goes
    /// there). Returns the bytes done for a read or write, 0 for other operations, or a
    /// negative errno (e.g. -EIO) on failure.
    func perform(_ request: UblkRequest, buffer: UnsafeMutableRawBufferPointer) -> Int32
    /// The queue has stopped: release what the backend holds for it.
    func close()
}

/// A queue backend that keeps many requests in flight at once: the queue's thread starts each
/// request and goes on fetching; the backend finishes requests on its own threads (a driver's
/// completion DPC), queues their results and signals ``completionEvent``, an eventfd the
/// queue's thread reads through its io_uring; the thread then takes the results and commits
/// them to the kernel (only the queue's own thread may).
public protocol UblkAsyncQueueBackend: UblkQueueBackend {
    /// The eventfd signalled when results are ready for ``takeCompletions(_:)``.
    var completionEvent: Int32 { get }
    /// Starts `request` for `tag` with its data in `buffer`. Returns nil when the result will
    /// come through ``takeCompletions(_:)``, or the result now (e.g. -EINVAL for a request the
    /// device cannot take), as ``UblkQueueBackend/perform(_:buffer:)`` returns it.
    func start(_ request: UblkRequest, tag: Int, buffer: UnsafeMutableRawBufferPointer) -> Int32?
    /// Hands each ready (tag, result) to `body`, on the queue's thread.
    func takeCompletions(_ body: (Int, Int32) -> Void)
}
