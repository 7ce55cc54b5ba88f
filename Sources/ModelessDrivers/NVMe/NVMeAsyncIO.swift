import ModelessDevice
import ModelessRuntime

/// Asynchronous reads and writes into and out of chunks of a `DMAPool`: with a closure per
/// command, or allocation-free with a caller's tag per command and one completion handler
/// registered once (or a visitor when polling). Their completions come from the ISR through
/// the DPC, or from ``pollCompletions(_:)``.
extension NVMeController {
    // MARK: Interrupts

    /// The ISR (interrupts disabled, spin locks only): takes the new completions of the
    /// queues its vector serves (the admin queue, and the I/O queues `firstQueue`,
    /// `firstQueue + stride`, …), wakes synchronous waiters and queues each I/O queue's DPC
    /// for the rest. NVMe has no cause register: the queues' phase tags say what is new.
    func interrupt(admin servesAdmin: Bool, firstQueue: Int, stride: Int) {
        var synchronous = false
        if servesAdmin {
            var found = NVMeQueuePair.Found()
            service(admin, &found)
            synchronous = found.synchronous
        }
        var index = firstQueue
        while index < ioQueueReferences.count {
            var found = NVMeQueuePair.Found()
            withIOQueue(index) { service($0, &found) }
            synchronous = synchronous || found.synchronous
            if found.ready { handOverReferences[index]._withUnsafeGuaranteedRef { _ = $0.queue() } }
            index += stride
        }
        if registers.health.faultCount > 0 {  // A doorbell write failed: the registers are gone.
            lose(.deviceLost("a register access failed; see the region's health"))
        }
        if synchronous { completed.signal() }
    }

    private func service(_ queue: NVMeQueuePair, _ found: inout NVMeQueuePair.Found) {
        var unused = 0
        do {
            let more = try queue.service(batchCount: &unused)
            found.synchronous = found.synchronous || more.synchronous
            found.ready = found.ready || more.ready
        } catch {
            lose(.deviceLost("reading completion queue \(queue.identifier): \(error)"))
        }
    }

    /// I/O queue `index`'s DPC: hands the tagged completions the ISR took to the registered
    /// handler, and runs the handlers of closure ones, outside the ISR and outside every lock.
    func handOverCompletions(_ index: Int) {
        withUnsafeTemporaryAllocation(of: NVMeIOCompletion.self, capacity: Self.handOverBatch) { batch in
            withIOQueue(index) { queue in
                while handOverReady(queue, batch, { _ in }, visiting: false) {}
            }
        }
    }

    /// Hands over one batch of `queue`'s ready tagged completions (as ``deliver(_:_:_:visiting:)``)
    /// and runs the ready closure handlers, one at a time outside the queue's lock. Returns
    /// whether there was anything. Takes no reference and builds no array for tagged completions.
    private func handOverReady(_ queue: NVMeQueuePair, _ batch: UnsafeMutableBufferPointer<NVMeIOCompletion>,
                               _ visit: (NVMeIOCompletion) -> Void, visiting: Bool) -> Bool {
        let count = queue.takeReady(into: batch)
        deliver(batch, count, visit, visiting: visiting)
        var ranClosures = false
        while let (handler, entry) = queue.takeReadyClosure() {
            handler(entry)
            ranClosures = true
        }
        return count > 0 || ranClosures
    }

    /// Hands `count` tagged completions of `batch` to `visit` when `visiting`, else to the
    /// registered handler; what they submit meanwhile is one batch (one doorbell write).
    private func deliver(_ batch: UnsafeMutableBufferPointer<NVMeIOCompletion>, _ count: Int,
                         _ visit: (NVMeIOCompletion) -> Void, visiting: Bool) {
        guard count > 0 else { return }
        let target = submissionQueueIndex()
        withIOQueue(target) { $0.plug() }
        defer { withIOQueue(target) { $0.unplug() } }
        if visiting {
            for index in 0..<count { visit(batch[index]) }
        } else if let handler = taggedHandler.withLock({ $0.current }) {
            handler._withUnsafeGuaranteedRef { handler in
                for index in 0..<count { handler.call(batch[index]) }
            }
        }
    }

    /// Runs `body`, whose submissions go to the controller in one batch per I/O queue: each
    /// queue's tail doorbell is written once, when `body` returns (each command's entry is
    /// written at once). Batches may nest; keep them short, since other threads' submissions
    /// also wait for the doorbell until the batch ends.
    public func batchSubmissions<Result>(_ body: () throws -> Result) rethrows -> Result {
        let count = ioQueueCount
        for index in 0..<count { withIOQueue(index) { $0.plug() } }
        defer { for index in 0..<count { withIOQueue(index) { $0.unplug() } } }
        return try body()
    }

    // MARK: Polling

    /// When polling: takes new completions of every I/O queue and runs their handlers (closures, and the
    /// registered handler for tagged ones). Returns how many completions it took; 0 when
    /// completions come by interrupt (the DPC hands them over). Throws ``failure`` once the
    /// controller is lost, after handing over the commands that failed with it.
    @discardableResult
    public func pollCompletions() throws -> Int {
        try poll({ _ in }, visiting: false)
    }

    /// When polling: takes new I/O completions, handing tagged ones to `visit` (in order, on
    /// this thread; allocation-free) instead of the registered handler, and running the
    /// handlers of closure ones. Returns how many completions it took.
    @discardableResult
    public func pollCompletions(_ visit: (NVMeIOCompletion) -> Void) throws -> Int {
        try poll(visit, visiting: true)
    }

    /// How many completions are handed over per pass: a stack buffer of this many (the rest
    /// wait in the queue's ready list for the next pass).
    static let handOverBatch = 32

    /// How many empty polls pass between two reads of the controller's status.
    private static let emptyPollsPerStatusCheck = 1024

    private func poll(_ visit: (NVMeIOCompletion) -> Void, visiting: Bool) throws(Failure) -> Int {
        guard completion == .poll else { return 0 }
        let taken = handOverPolled(visit, visiting: visiting)
        if taken == 0, emptyPolls.wrappingAdd(1, ordering: .relaxed).newValue % Self.emptyPollsPerStatusCheck == 0 {
            try checkController()
        } else if registers.health.faultCount > 0 {
            try checkController()
        }
        try throwIfLost()
        return taken
    }

    /// Takes every I/O queue's new completions on this thread and hands them over: tagged ones
    /// to `visit` (when `visiting`; else the registered handler), closure ones to their
    /// handlers. Returns how many.
    @discardableResult
    func handOverPolled(_ visit: (NVMeIOCompletion) -> Void, visiting: Bool) -> Int {
        var taken = 0
        for index in 0..<ioQueueCount {
            taken += withIOQueue(index) { handOverPolled($0, visit, visiting: visiting) }
        }
        return taken
    }

    /// Takes `io`'s new completions on this thread and hands them over, as ``handOverPolled(_:visiting:)``.
    @discardableResult
    func handOverPolled(_ io: NVMeQueuePair, _ visit: (NVMeIOCompletion) -> Void, visiting: Bool) -> Int {
        withUnsafeTemporaryAllocation(of: NVMeIOCompletion.self, capacity: Self.handOverBatch) { batch in
            var count = 0
            var found = NVMeQueuePair.Found()
            do {
                found = try io.service(into: batch, batchCount: &count)
            } catch {
                lose(.deviceLost("reading completion queue \(io.identifier): \(error)"))
            }
            if found.synchronous { completed.signal() }
            deliver(batch, count, visit, visiting: visiting)
            if found.ready || isLost.load(ordering: .relaxed) {
                while handOverReady(io, batch, visit, visiting: visiting) {}
            }
            return found.taken
        }
    }

    // MARK: Submission

    /// Builds a Read or Write of `blocks` blocks at `lba` of `namespace` whose data is `chunk`
    /// of `pool` (page-aligned, at most two pages), refusing requests the device must not see.
    private func ioCommand(_ opcode: NVMeOpcode, lba: UInt64, blocks: Int, chunk: DMAPool.Chunk, pool: DMAPool,
                           namespace identifier: UInt32?) throws(Failure) -> NVMeCommand {
        let namespace = try namespace(identifier)
        let bytes = blocks &* namespace.blockSize
        let page = UInt64(Self.pageSize)
        guard blocks > 0, bytes <= min(pool.chunkSize, 2 * Self.pageSize), chunk.deviceAddress % page == 0,
              chunk.index >= 0, chunk.index < pool.capacity, pool.chunk(chunk.index) == chunk else {
            throw .badRequest("an asynchronous read or write uses one page-aligned chunk of its pool, of at most two pages")
        }
        try checkRange(lba, blocks, in: namespace)
        return .transfer(opcode, namespace: namespace.identifier, lba: lba, blocks: blocks, prp1: chunk.deviceAddress,
                         prp2: bytes > Self.pageSize ? chunk.deviceAddress + page : 0)
    }

    private func submitWithHandler(_ command: NVMeCommand, _ what: String,
                                   _ completion: @escaping @Sendable (Result<Void, Failure>) -> Void) throws(Failure) {
        let handler: NVMeCompletionHandler = { [weak self] entry in
            guard let entry else {
                completion(.failure(self?.failure ?? .stopped))
                return
            }
            completion(entry.status.succeeded ? .success(())
                       : .failure(.commandFailed(what, statusType: entry.status.type, statusCode: entry.status.code)))
        }
        try submit(command, to: submissionQueue(), as: .closure, handler: handler)
    }

    /// Starts reading `blocks` blocks at `lba` of `namespace` (the first active one when nil)
    /// into `chunk` of `pool` (page-aligned, at most two pages) and returns at once;
    /// `completion` runs later, from the completion DPC (or from ``pollCompletions()`` when
    /// polling), with the outcome. Up to the I/O queue's size less one may be in flight. Each
    /// call allocates its handler; ``submitRead(lba:blocks:into:of:tag:namespace:queue:)`` does not.
    public func readAsync(lba: UInt64, blocks: Int, into chunk: DMAPool.Chunk, of pool: DMAPool, namespace: UInt32? = nil,
                          completion: @escaping @Sendable (Result<Void, Failure>) -> Void) throws {
        try submitWithHandler(try ioCommand(.read, lba: lba, blocks: blocks, chunk: chunk, pool: pool, namespace: namespace),
                              "Read", completion)
    }

    /// Starts writing `blocks` blocks at `lba` of `namespace` from `chunk` of `pool` and
    /// returns at once; `completion` runs later as for ``readAsync(lba:blocks:into:of:namespace:completion:)``.
    /// The chunk must not change until then.
    public func writeAsync(lba: UInt64, blocks: Int, from chunk: DMAPool.Chunk, of pool: DMAPool, namespace: UInt32? = nil,
                           completion: @escaping @Sendable (Result<Void, Failure>) -> Void) throws {
        try submitWithHandler(try ioCommand(.write, lba: lba, blocks: blocks, chunk: chunk, pool: pool, namespace: namespace),
                              "Write", completion)
    }

    /// Registers the handler tagged reads and writes complete to, from the completion DPC or
    /// ``pollCompletions()``. Register it once, before submitting.
    public func setCompletionHandler(_ handler: @escaping @Sendable (NVMeIOCompletion) -> Void) {
        let registered = TaggedHandler(handler)
        taggedHandler.withLock { handlers in
            handlers.registered.append(registered)
            handlers.current = Unmanaged.passUnretained(registered)
        }
    }

    /// Starts reading `blocks` blocks at `lba` of `namespace` into `chunk` of `pool`, like
    /// ``readAsync(lba:blocks:into:of:namespace:completion:)``, but allocation-free: the
    /// outcome goes, with `tag`, to the handler given to ``setCompletionHandler(_:)`` (or to the
    /// visitor of ``pollCompletions(_:)``). Throws, submitting nothing, when the queue is full.
    /// The command goes to the calling CPU's I/O queue, or to queue `queue` (an index below
    /// ``ioQueueCount``, wrapped) when given.
    public func submitRead(lba: UInt64, blocks: Int, into chunk: DMAPool.Chunk, of pool: DMAPool, tag: UInt64,
                           namespace: UInt32? = nil, queue: Int? = nil) throws {
        let command = try ioCommand(.read, lba: lba, blocks: blocks, chunk: chunk, pool: pool, namespace: namespace)
        try withIOQueue(submissionQueueIndex(queue)) { _ = try submit(command, to: $0, as: .tagged, tag: tag) }
    }

    /// Starts writing `blocks` blocks at `lba` of `namespace` from `chunk` of `pool`,
    /// allocation-free, with `tag`; see ``submitRead(lba:blocks:into:of:tag:namespace:queue:)``.
    public func submitWrite(lba: UInt64, blocks: Int, from chunk: DMAPool.Chunk, of pool: DMAPool, tag: UInt64,
                            namespace: UInt32? = nil, queue: Int? = nil) throws {
        let command = try ioCommand(.write, lba: lba, blocks: blocks, chunk: chunk, pool: pool, namespace: namespace)
        try withIOQueue(submissionQueueIndex(queue)) { _ = try submit(command, to: $0, as: .tagged, tag: tag) }
    }
}
