import ModelessDevice

/// What a block device served from a namespace may offer besides Read and Write, as Identify
/// Controller says: ONCS (Optional NVM Command Support, bytes 521:520) and VWC (Volatile
/// Write Cache, byte 525).
public struct NVMeOptionalCommands: Sendable, Equatable {
    /// Dataset Management (ONCS bit 2), whose Deallocate attribute discards ranges.
    public var datasetManagement: Bool
    /// Write Zeroes (ONCS bit 3).
    public var writeZeroes: Bool
    /// A volatile write cache is present (VWC bit 0): Flush makes writes durable.
    public var volatileWriteCache: Bool

    /// The optional commands as Identify Controller's ONCS and VWC fields report them.
    public init(datasetManagement: Bool, writeZeroes: Bool, volatileWriteCache: Bool) {
        self.datasetManagement = datasetManagement
        self.writeZeroes = writeZeroes
        self.volatileWriteCache = volatileWriteCache
    }

    static let datasetManagementBit: UInt16 = 1 << 2
    static let writeZeroesBit: UInt16 = 1 << 3
    static let optionalCommandsOffset = 520
    static let volatileWriteCacheOffset = 525
}

extension NVMeOpcode {
    static let writeZeroes = NVMeOpcode(rawValue: 0x08)
    static let datasetManagement = NVMeOpcode(rawValue: 0x09)
}

/// Tagged block commands for a server that keeps many requests in flight from one thread
/// (the ublk server): transfers of any size up to ``NVMeController/maximumTransfer`` through
/// a PRP list kept in the request's own DMA chunk, Flush, Dataset Management (Deallocate) and
/// Write Zeroes. Each completes, with its tag, to the handler given to
/// ``NVMeController/setCompletionHandler(_:)`` (or the visitor of
/// ``NVMeController/pollCompletions(_:)``); each throws, submitting nothing, when the I/O
/// queue is full or the request is out of range.
extension NVMeController {
    /// The direction of a transfer.
    public enum TransferDirection: Sendable {
        case read, write
    }

    /// ONCS and VWC, from the Identify Controller data the start read (fails only once the
    /// controller is lost).
    public func optionalCommands() throws -> NVMeOptionalCommands {
        try throwIfLost()
        let data = identifyControllerData
        let oncs: UInt16 = data.little(NVMeOptionalCommands.optionalCommandsOffset)
        return NVMeOptionalCommands(
            datasetManagement: oncs & NVMeOptionalCommands.datasetManagementBit != 0,
            writeZeroes: oncs & NVMeOptionalCommands.writeZeroesBit != 0,
            volatileWriteCache: data.bytes[NVMeOptionalCommands.volatileWriteCacheOffset] & 1 != 0)
    }

    /// The bytes of a chunk that ``submitTransfer(_:lba:blocks:chunk:of:tag:namespace:)`` needs
    /// for transfers of up to `dataBytes`: the data pages, then one page for the PRP list.
    public static func transferChunkSize(dataBytes: Int) -> Int {
        (dataBytes + pageSize - 1) / pageSize * pageSize + pageSize
    }

    /// The largest transfer one command carries: MDTS (and this driver's own bound).
    public var maximumTransferBytes: Int { maximumTransfer }

    /// Starts a Read or Write of `blocks` blocks at `lba` of `namespace` (the first active one
    /// when nil) whose data is the start of `chunk` of `pool`. The chunk must be page-aligned
    /// and of ``transferChunkSize(dataBytes:)`` for the transfer: past the data, its last page
    /// holds the PRP list of transfers longer than two pages.
    public func submitTransfer(_ direction: TransferDirection, lba: UInt64, blocks: Int, chunk: DMAPool.Chunk, of pool: DMAPool,
                               tag: UInt64, namespace identifier: UInt32? = nil) throws {
        let namespace = try namespace(identifier)
        let bytes = blocks &* namespace.blockSize
        let page = Self.pageSize
        guard blocks > 0, bytes <= maximumTransfer, Self.transferChunkSize(dataBytes: bytes) <= pool.chunkSize,
              chunk.deviceAddress % UInt64(page) == 0, chunk.index >= 0, chunk.index < pool.capacity,
              pool.chunk(chunk.index) == chunk else {
            throw Failure.badRequest("a transfer is 1 to \(maximumTransfer / max(namespace.blockSize, 1)) blocks into one page-aligned chunk "
                                     + "of at least transferChunkSize(dataBytes:) bytes")
        }
        try checkRange(lba, blocks, in: namespace)
        let pages = (bytes + page - 1) / page
        let base = chunk.deviceAddress
        var prp2: UInt64 = 0
        if pages == 2 {
            prp2 = base + UInt64(page)
        } else if pages > 2 {
            let list = pool.chunkSize / page * page - page
            for index in 1..<pages {
                try pool.store64(base + UInt64(index * page), chunk, at: list + (index - 1) * 8)
            }
            prp2 = base + UInt64(list)
        }
        try withIOQueue(submissionQueueIndex()) { try submit(.transfer(direction == .read ? .read : .write, namespace: namespace.identifier, lba: lba, blocks: blocks,
                             prp1: base, prp2: prp2), to: $0, as: .tagged, tag: tag) }
    }

    /// Starts a Flush of `namespace` (the first active one when nil).
    public func submitFlush(tag: UInt64, namespace identifier: UInt32? = nil) throws {
        let namespace = try namespace(identifier)
        try withIOQueue(submissionQueueIndex()) { try submit(NVMeCommand(.flush, namespace: namespace.identifier), to: $0, as: .tagged, tag: tag) }
    }

    /// Starts a Write Zeroes of `blocks` blocks (at most 65,536) at `lba` of `namespace`.
    public func submitWriteZeroes(lba: UInt64, blocks: Int, tag: UInt64, namespace identifier: UInt32? = nil) throws {
        let namespace = try namespace(identifier)
        guard blocks > 0, blocks <= Self.maximumRangeBlocks else {
            throw Failure.badRequest("Write Zeroes covers 1 to \(Self.maximumRangeBlocks) blocks, not \(blocks)")
        }
        try checkRange(lba, blocks, in: namespace)
        var command = NVMeCommand(.writeZeroes, namespace: namespace.identifier)
        command.dword10 = UInt32(truncatingIfNeeded: lba)
        command.dword11 = UInt32(truncatingIfNeeded: lba >> 32)
        command.dword12 = UInt32(blocks - 1)
        try withIOQueue(submissionQueueIndex()) { try submit(command, to: $0, as: .tagged, tag: tag) }
    }

    /// Starts a Dataset Management with the Deallocate attribute for one range, `blocks`
    /// blocks at `lba` of `namespace`; the range entry is written at the start of `chunk`
    /// (page-aligned, at least 16 bytes).
    public func submitDeallocate(lba: UInt64, blocks: Int, chunk: DMAPool.Chunk, of pool: DMAPool, tag: UInt64,
                                 namespace identifier: UInt32? = nil) throws {
        let namespace = try namespace(identifier)
        guard blocks > 0, UInt64(blocks) <= UInt64(UInt32.max), chunk.deviceAddress % UInt64(Self.pageSize) == 0,
              pool.chunkSize >= Self.rangeEntrySize else {
            throw Failure.badRequest("a deallocation is 1 to \(UInt32.max) blocks, its range in a page-aligned chunk")
        }
        try checkRange(lba, blocks, in: namespace)
        // Range entry (figure 384): context attributes, length in blocks, starting LBA.
        try pool.store32(0, chunk, at: 0)
        try pool.store32(UInt32(blocks), chunk, at: 4)
        try pool.store64(lba, chunk, at: 8)
        var command = NVMeCommand(.datasetManagement, namespace: namespace.identifier)
        command.prp1 = chunk.deviceAddress
        command.dword10 = 0                    // NR: one range (0-based)
        command.dword11 = Self.deallocateAttribute
        try withIOQueue(submissionQueueIndex()) { try submit(command, to: $0, as: .tagged, tag: tag) }
    }

    /// The most blocks a Write Zeroes covers (NLB is 16 bits, 0-based).
    public static let maximumRangeBlocks = 65_536
    /// Dataset Management's AD (Attribute – Deallocate) bit in CDW11.
    static let deallocateAttribute: UInt32 = 1 << 2
    /// Bytes of one Dataset Management range.
    static let rangeEntrySize = 16
}
