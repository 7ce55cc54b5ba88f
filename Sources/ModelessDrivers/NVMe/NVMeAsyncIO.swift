import ModelessDevice

/// What an asynchronous I/O command identifier is waiting for.
enum IOSlot {
    /// Nothing asynchronous: a synchronous waiter (or nothing) looks for its completion.
    case synchronous
    /// A handler given as a closure with the command.
    case closure
    /// The controller's tagged completion handler, with the caller's tag.
    case tagged
}

/// The outcome of a tagged asynchronous read or write: the caller's tag and the NVMe status.
public struct NVMeIOCompletion: Sendable, Equatable {
    /// The tag the caller gave when submitting.
    public let tag: UInt64
    /// Status Code Type and Status Code; both zero on success.
    public let statusType: UInt8
    public let statusCode: UInt8

    init(tag: UInt64, _ entry: NVMeCompletion) {
        self.tag = tag
        statusType = entry.statusType
        statusCode = entry.statusCode
    }

    /// Whether the command succeeded.
    public var succeeded: Bool { statusType == 0 && statusCode == 0 }
}

/// Asynchronous reads and writes into and out of chunks of a ``DMAPool``: with a closure per
/// command, or allocation-free with a caller's tag per command and one completion handler
/// registered once (or a visitor when polling).
extension NVMeController {
    /// Builds a Read or Write of `blocks` blocks at `lba` whose data is `chunk` of `pool`
    /// (page-aligned, at most two pages), refusing requests the device must not see.
    private func ioCommand(_ opcode: UInt8, lba: UInt64, blocks: Int, chunk: DMAPool.Chunk, pool: DMAPool) throws -> NVMeCommand {
        let bytes = blocks &* namespaceBlockSize
        guard blocks > 0, bytes <= min(pool.chunkSize, 8192), chunk.deviceAddress % 4096 == 0,
              chunk.index >= 0, chunk.index < pool.capacity, pool.chunk(chunk.index) == chunk else {
            throw Failure.badRequest("an asynchronous read or write uses one page-aligned chunk of its pool, of at most two pages")
        }
        guard lba <= namespaceBlockCount, UInt64(blocks) <= namespaceBlockCount - lba else {
            throw Failure.badRequest("blocks \(lba)..<\(lba + UInt64(blocks)) are beyond the namespace's \(namespaceBlockCount)")
        }
        var command = NVMeCommand(opcode: opcode, namespace: 1)
        command.setPRPs(chunk.deviceAddress, bytes > 4096 ? chunk.deviceAddress + 4096 : 0)
        command.setBlocks(lba: lba, count: blocks)
        return command
    }

    private func submitWithHandler(_ command: NVMeCommand, _ what: String,
                                   _ completion: @escaping @Sendable (Result<Void, Failure>) -> Void) throws {
        let handler: @Sendable (NVMeCompletion) -> Void = { entry in
            completion(entry.succeeded ? .success(())
                       : .failure(.commandFailed(what, statusType: entry.statusType, statusCode: entry.statusCode)))
        }
        _ = try io.submitLock.withLock {
            try io.submit(command) { identifier in
                results.withLock {
                    ioSlots[Int(identifier)] = .closure
                    handlers[identifier] = handler
                }
            }
        }
    }

    private func submitTagged(_ command: NVMeCommand, tag: UInt64) throws {
        let queue = io
        queue.submitLock.lock()
        defer { queue.submitLock.unlock() }
        let identifier = try queue.takeIdentifier()
        results.lock()
        ioSlots[Int(identifier)] = .tagged
        ioTags[Int(identifier)] = tag
        results.unlock()
        try queue.submit(command, identifier: identifier)
    }

    /// Starts reading `blocks` blocks at `lba` into `chunk` of `pool` (page-aligned, at most two
    /// pages) and returns at once; `completion` runs later, from the completion DPC (or from
    /// ``pollCompletions()`` when polling), with the outcome. Up to the I/O queue's size less
    /// one may be in flight. Each call allocates its handler; ``submitRead(lba:blocks:into:of:tag:)`` does not.
    public func readAsync(lba: UInt64, blocks: Int, into chunk: DMAPool.Chunk, of pool: DMAPool,
                          completion: @escaping @Sendable (Result<Void, Failure>) -> Void) throws {
        try submitWithHandler(try ioCommand(NVMeOpcode.read, lba: lba, blocks: blocks, chunk: chunk, pool: pool), "Read", completion)
    }

    /// Starts writing `blocks` blocks at `lba` from `chunk` of `pool` (page-aligned, at most two
    /// pages) and returns at once; `completion` runs later as for ``readAsync(lba:blocks:into:of:completion:)``.
    /// The chunk must not change until then.
    public func writeAsync(lba: UInt64, blocks: Int, from chunk: DMAPool.Chunk, of pool: DMAPool,
                           completion: @escaping @Sendable (Result<Void, Failure>) -> Void) throws {
        try submitWithHandler(try ioCommand(NVMeOpcode.write, lba: lba, blocks: blocks, chunk: chunk, pool: pool), "Write", completion)
    }

    /// Registers the handler tagged reads and writes complete to, from the completion DPC or
    /// ``pollCompletions()``. Register it once, before submitting; it is kept until ``stop()``.
    public func setCompletionHandler(_ handler: @escaping @Sendable (NVMeIOCompletion) -> Void) {
        results.withLock { taggedHandler = handler }
    }

    /// Starts reading `blocks` blocks at `lba` into `chunk` of `pool`, like
    /// ``readAsync(lba:blocks:into:of:completion:)``, but allocation-free: the outcome goes,
    /// with `tag`, to the handler given to ``setCompletionHandler(_:)`` (or to the visitor of
    /// ``pollCompletions(_:)``). Throws, submitting nothing, when the queue is full.
    public func submitRead(lba: UInt64, blocks: Int, into chunk: DMAPool.Chunk, of pool: DMAPool, tag: UInt64) throws {
        try submitTagged(try ioCommand(NVMeOpcode.read, lba: lba, blocks: blocks, chunk: chunk, pool: pool), tag: tag)
    }

    /// Starts writing `blocks` blocks at `lba` from `chunk` of `pool`, allocation-free, with
    /// `tag`; see ``submitRead(lba:blocks:into:of:tag:)``.
    public func submitWrite(lba: UInt64, blocks: Int, from chunk: DMAPool.Chunk, of pool: DMAPool, tag: UInt64) throws {
        try submitTagged(try ioCommand(NVMeOpcode.write, lba: lba, blocks: blocks, chunk: chunk, pool: pool), tag: tag)
    }

    /// When polling: takes new I/O completions and runs their handlers (closures, and the
    /// registered handler for tagged ones). Returns how many completions it took.
    @discardableResult
    public func pollCompletions() throws -> Int {
        let count = try io.submitLock.withLock { try results.withLock { try io.drain { file($0, from: io) } } }
        runCompletions()
        return count
    }

    /// When polling: takes new I/O completions, handing tagged ones to `visit` (in order, on
    /// this thread; allocation-free) instead of the registered handler, and running the
    /// handlers of closure ones. Returns how many completions it took.
    @discardableResult
    public func pollCompletions(_ visit: (NVMeIOCompletion) -> Void) throws -> Int {
        let queue = io
        var filed = false
        handing.lock()
        defer { handing.unlock() }
        queue.submitLock.lock()
        results.lock()
        let count: Int
        do {
            count = try queue.drain { entry in
                if let tagged = takeTagged(entry, from: queue) {
                    runningTagged.append(tagged)
                } else {
                    file(entry, from: queue)
                    filed = true
                }
            }
        } catch {
            results.unlock()
            queue.submitLock.unlock()
            throw error
        }
        results.unlock()
        queue.submitLock.unlock()
        for index in runningTagged.indices { visit(runningTagged[index]) }
        runningTagged.removeAll(keepingCapacity: true)
        if filed {
            handing.unlock()
            runCompletions()
            handing.lock()
        }
        return count
    }
}
