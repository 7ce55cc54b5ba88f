/// One request's parameter block: a view into its ``ParameterChain``.
///
/// The header says which device the request is for, its type and code, and, once the provider
/// has answered, its status. The ``input`` area carries what the consumer sends, the
/// ``output`` area what the provider returns.
public struct ParameterBlock: @unchecked Sendable {
    /// The chain this block belongs to.
    public let chain: ParameterChain
    /// The block's position in its chain.
    public let index: Int

    /// The request type; `nil` while the block is unused.
    public var requestType: RequestType? {
        get { RequestType(rawValue: chain.load(UInt16.self, block: index, at: BlockLayout.requestType)) }
        nonmutating set { chain.store(newValue?.rawValue ?? 0, block: index, at: BlockLayout.requestType) }
    }

    /// The request's code: which control operation or non-standard request; free for read and write.
    public var code: UInt32 {
        get { chain.load(UInt32.self, block: index, at: BlockLayout.code) }
        nonmutating set { chain.store(newValue, block: index, at: BlockLayout.code) }
    }

    /// The originator's identifier for this request, unique among its requests (0: none).
    /// A provider that keeps a ledger of executed requests uses it to execute a request that
    /// is sent again, after a failover, only once.
    public var requestID: UInt64 {
        get { chain.load(UInt64.self, block: index, at: BlockLayout.requestID) }
        nonmutating set { chain.store(newValue, block: index, at: BlockLayout.requestID) }
    }

    /// What the originator says about the request: for example that it is being sent again.
    public var flags: RequestFlags {
        get { RequestFlags(rawValue: chain.load(UInt16.self, block: index, at: BlockLayout.flags)) }
        nonmutating set { chain.store(newValue.rawValue, block: index, at: BlockLayout.flags) }
    }

    /// The device the request was sent to, written by `send`.
    public var deviceName: String {
        let length = min(Int(chain.load(UInt16.self, block: index, at: BlockLayout.nameLength)), BlockLayout.nameCapacity)
        let start = chain.offsets[index] + BlockLayout.name
        return String(decoding: UnsafeRawBufferPointer(rebasing: chain.storage[start..<start + length]), as: UTF8.self)
    }

    /// The input area: what the consumer sends.
    public var input: ParameterArea {
        ParameterArea(
            chain: chain, start: chain.offsets[index] + BlockLayout.headerSize,
            capacity: Int(chain.load(UInt32.self, block: index, at: BlockLayout.inputCapacity)),
            block: index, lengthField: BlockLayout.inputLength)
    }

    /// The output area: what the provider returns.
    public var output: ParameterArea {
        let inputCapacity = Int(chain.load(UInt32.self, block: index, at: BlockLayout.inputCapacity))
        return ParameterArea(
            chain: chain, start: chain.offsets[index] + BlockLayout.headerSize + inputCapacity,
            capacity: Int(chain.load(UInt32.self, block: index, at: BlockLayout.outputCapacity)),
            block: index, lengthField: BlockLayout.outputLength)
    }

    /// A non-standard request's Swift value, set by the consumer. Within a container it is
    /// handed over as is; between containers the code's ``RequestMarshaller`` carries it.
    public var requestPayload: (any Sendable)? {
        get { chain.requestPayloads[index] }
        nonmutating set { chain.requestPayloads[index] = newValue }
    }

    /// A non-standard request's answer, set by the provider.
    public var replyPayload: (any Sendable)? {
        get { chain.replyPayloads[index] }
        nonmutating set { chain.replyPayloads[index] = newValue }
    }

    /// The failure the provider reported, or nil if the request succeeded (or is unanswered).
    public var failure: LogicalDeviceError.Kind? {
        LogicalDeviceError.Kind(rawValue: chain.load(UInt16.self, block: index, at: BlockLayout.status))
    }

    func setStatus(_ kind: LogicalDeviceError.Kind?) {
        chain.store(kind?.rawValue ?? 0, block: index, at: BlockLayout.status)
    }

    /// Writes `container/device` into the block's name field, part by part (no string is
    /// built: this runs on every request).
    func setDeviceName(_ name: LogicalDeviceName) {
        let start = chain.offsets[index] + BlockLayout.name
        let destination = UnsafeMutableRawBufferPointer(rebasing: chain.storage[start..<start + BlockLayout.nameCapacity])
        var length = 0
        func append(_ byte: UInt8) {
            guard length < BlockLayout.nameCapacity else { return }
            destination[length] = byte
            length += 1
        }
        for byte in name.container.utf8 { append(byte) }
        append(UInt8(ascii: "/"))
        for byte in name.device.utf8 { append(byte) }
        chain.store(UInt16(length), block: index, at: BlockLayout.nameLength)
    }

    /// Resets the header and both areas' lengths (capacities stay).
    func clear() {
        requestType = nil
        code = 0
        chain.store(UInt16(0), block: index, at: BlockLayout.nameLength)
        chain.store(UInt32(0), block: index, at: BlockLayout.inputLength)
        chain.store(UInt32(0), block: index, at: BlockLayout.outputLength)
        setStatus(nil)
        flags = []
        requestID = 0
        requestPayload = nil
        replyPayload = nil
    }
}

/// A bounds-checked view of one parameter area. Reads and writes outside the capacity fail
/// with ``LogicalDeviceError/Kind/tooLarge``; they never touch another block.
public struct ParameterArea: @unchecked Sendable {
    let chain: ParameterChain
    let start: Int
    /// The area's size in bytes.
    public let capacity: Int
    let block: Int
    let lengthField: Int

    /// How many bytes of the area are in use (at most ``capacity``).
    public var length: Int { Int(chain.load(UInt32.self, block: block, at: lengthField)) }

    /// Sets how many bytes are in use.
    public func setLength(_ length: Int) throws(LogicalDeviceError) {
        guard length >= 0, length <= capacity else {
            throw LogicalDeviceError(.tooLarge, "a length of \(length) bytes does not fit a \(capacity)-byte parameter area")
        }
        chain.store(UInt32(length), block: block, at: lengthField)
    }

    /// The bytes in use.
    public var bytes: [UInt8] { Array(UnsafeRawBufferPointer(rebasing: chain.storage[start..<start + length])) }

    /// Replaces the contents with `bytes` and sets the length to their count.
    public func setBytes(_ bytes: some Collection<UInt8>) throws(LogicalDeviceError) {
        try setLength(bytes.count)
        UnsafeMutableRawBufferPointer(rebasing: chain.storage[start..<start + bytes.count]).copyBytes(from: bytes)
    }

    /// The little-endian integer at `offset`.
    public func load<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) throws(LogicalDeviceError) -> T {
        try check(offset, MemoryLayout<T>.size)
        return T(littleEndian: chain.storage.loadUnaligned(fromByteOffset: start + offset, as: T.self))
    }

    /// Stores `value` little-endian at `offset`, extending the length to cover it.
    public func store<T: FixedWidthInteger>(_ value: T, at offset: Int) throws(LogicalDeviceError) {
        try check(offset, MemoryLayout<T>.size)
        chain.storage.storeBytes(of: value.littleEndian, toByteOffset: start + offset, as: T.self)
        if offset + MemoryLayout<T>.size > length { try setLength(offset + MemoryLayout<T>.size) }
    }

    /// Copies `bytes` to `offset`, extending the length to cover them.
    public func write(_ bytes: some Collection<UInt8>, at offset: Int) throws(LogicalDeviceError) {
        try check(offset, bytes.count)
        UnsafeMutableRawBufferPointer(rebasing: chain.storage[start + offset..<start + offset + bytes.count]).copyBytes(from: bytes)
        if offset + bytes.count > length { try setLength(offset + bytes.count) }
    }

    /// `count` bytes from `offset`.
    public func read(at offset: Int, count: Int) throws(LogicalDeviceError) -> [UInt8] {
        try check(offset, count)
        return Array(UnsafeRawBufferPointer(rebasing: chain.storage[start + offset..<start + offset + count]))
    }

    /// Copies `count` bytes from `source` at `sourceOffset` to this area at `offset`, without
    /// an intermediate array (for a provider passing data down or up a stack).
    public func copy(from source: ParameterArea, at sourceOffset: Int = 0, count: Int, to offset: Int = 0) throws(LogicalDeviceError) {
        try source.check(sourceOffset, count)
        try check(offset, count)
        let from = UnsafeRawBufferPointer(rebasing: source.chain.storage[source.start + sourceOffset..<source.start + sourceOffset + count])
        UnsafeMutableRawBufferPointer(rebasing: chain.storage[start + offset..<start + offset + count]).copyMemory(from: from)
        if offset + count > length { try setLength(offset + count) }
    }

    func check(_ offset: Int, _ count: Int) throws(LogicalDeviceError) {
        guard offset >= 0, count >= 0, offset <= capacity, count <= capacity - offset else {
            throw LogicalDeviceError(.tooLarge, "bytes \(offset)..<\(offset + count) are outside a \(capacity)-byte parameter area")
        }
    }
}
