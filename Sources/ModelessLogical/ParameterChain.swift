/// The parameter blocks of one request and every request it causes down a stack of logical
/// devices, allocated once by the originator.
///
/// A consumer that sends to device X fills block 0. X's request handler, itself a consumer of
/// Y and A, claims the next unused block for its request to Y and another for its request to
/// A; Y claims one more if it consumes Z; and so on, so that a whole call tree runs in memory
/// allocated up front. Between containers the blocks from the request's own onwards travel
/// with it and come back with what the provider (and those below it) filled in.
///
/// Each block is a header (device name, request type, code, status, area lengths) followed by
/// an input area and an output area of fixed capacity.
public final class ParameterChain: @unchecked Sendable {
    /// The sizes of one block's areas.
    public struct Capacity: Sendable, Equatable {
        /// Bytes of the input area.
        public var input: Int
        /// Bytes of the output area.
        public var output: Int
        /// Areas of `input` and `output` bytes.
        public init(input: Int, output: Int) {
            self.input = input
            self.output = output
        }
    }

    /// The most bytes a chain may hold in all (headers and areas): the largest message one
    /// request may be between containers.
    public static let maximumBytes = 192 * 1024

    let storage: UnsafeMutableRawBufferPointer
    let offsets: [Int]
    /// Blocks claimed so far by requests in this chain.
    public internal(set) var claimedCount = 0
    var requestPayloads: [(any Sendable)?]
    var replyPayloads: [(any Sendable)?]

    /// A chain of blocks with the given area sizes.
    public init(capacities: [Capacity]) throws(LogicalDeviceError) {
        guard !capacities.isEmpty, capacities.count <= Int(UInt16.max) else {
            throw LogicalDeviceError(.tooLarge, "a parameter chain needs 1-\(UInt16.max) blocks, not \(capacities.count)")
        }
        var offsets: [Int] = []
        var total = 0
        for capacity in capacities {
            guard capacity.input >= 0, capacity.output >= 0 else {
                throw LogicalDeviceError(.tooLarge, "parameter areas cannot have negative sizes")
            }
            offsets.append(total)
            total += BlockLayout.headerSize + capacity.input + capacity.output
            guard total <= Self.maximumBytes else {
                throw LogicalDeviceError(
                    .tooLarge, "a parameter chain of more than \(Self.maximumBytes) bytes was asked for: use smaller areas or fewer blocks")
            }
        }
        self.offsets = offsets
        storage = .allocate(byteCount: max(total, 1), alignment: 8)
        storage.initializeMemory(as: UInt8.self, repeating: 0)
        requestPayloads = Array(repeating: nil, count: capacities.count)
        replyPayloads = Array(repeating: nil, count: capacities.count)
        for (index, capacity) in capacities.enumerated() {
            store(UInt32(capacity.input), block: index, at: BlockLayout.inputCapacity)
            store(UInt32(capacity.output), block: index, at: BlockLayout.outputCapacity)
        }
    }

    /// `blocks` blocks, each with the same area sizes.
    public convenience init(blocks: Int, inputCapacity: Int, outputCapacity: Int) throws(LogicalDeviceError) {
        try self.init(capacities: Array(repeating: Capacity(input: inputCapacity, output: outputCapacity), count: blocks))
    }

    deinit { storage.deallocate() }

    /// The number of blocks.
    public var count: Int { offsets.count }

    /// Block `index`.
    public subscript(index: Int) -> ParameterBlock {
        precondition(index >= 0 && index < count, "parameter block \(index) of \(count)")
        return ParameterBlock(chain: self, index: index)
    }

    /// Makes every block unused again, for the chain's next request from the originator.
    public func reset() {
        claimedCount = 0
    }

    /// Claims the next unused block, cleared, for a new request; fails when the originator
    /// did not allocate enough blocks for the stack below it.
    public func claimBlock() throws(LogicalDeviceError) -> ParameterBlock {
        guard claimedCount < count else {
            throw LogicalDeviceError(
                .chainExhausted,
                "all \(count) parameter blocks are in use: the originator must allocate one block per request in the stack")
        }
        let block = ParameterBlock(chain: self, index: claimedCount)
        claimedCount += 1
        block.clear()
        return block
    }

    /// The number of bytes block `index` occupies (header and both areas).
    func blockSize(_ index: Int) -> Int {
        BlockLayout.headerSize + Int(load(UInt32.self, block: index, at: BlockLayout.inputCapacity))
            + Int(load(UInt32.self, block: index, at: BlockLayout.outputCapacity))
    }

    func load<T: FixedWidthInteger>(_ type: T.Type, block: Int, at field: Int) -> T {
        T(littleEndian: storage.loadUnaligned(fromByteOffset: offsets[block] + field, as: T.self))
    }

    func store<T: FixedWidthInteger>(_ value: T, block: Int, at field: Int) {
        storage.storeBytes(of: value.littleEndian, toByteOffset: offsets[block] + field, as: T.self)
    }
}

/// Where each header field sits in a block.
enum BlockLayout {
    static let requestType = 0  // UInt16; 0 while unused
    static let nameLength = 2  // UInt16
    static let code = 4  // UInt32
    static let inputLength = 8  // UInt32
    static let outputLength = 12  // UInt32
    static let inputCapacity = 16  // UInt32
    static let outputCapacity = 20  // UInt32
    static let status = 24  // UInt16: 0, or a LogicalDeviceError.Kind
    static let flags = 26  // UInt16: RequestFlags
    static let name = 32  // up to nameCapacity bytes of UTF-8
    static let nameCapacity = 2 * LogicalDeviceName.maximumLength + 1
    static let requestID = 136  // UInt64: the originator's id for the request, 0 for none
    static let headerSize = 144
}
