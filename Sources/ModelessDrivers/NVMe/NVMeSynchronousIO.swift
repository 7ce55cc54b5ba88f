import ModelessDevice
import ModelessRuntime
import ModelessSystem

/// Synchronous commands: the caller waits, at passive level, for the completion the ISR (or
/// its own polling) files; data goes through the bounce buffer, one request at a time.
extension NVMeController {
    /// How often a waiting caller looks at the controller's status.
    private static let statusInterval: Duration = .milliseconds(10)

    /// Refuses to wait at interrupt level, where the completion would come only after the wait
    /// (the verifier reports the attempt).
    func mayWait(_ what: String) throws(Failure) {
        do {
            try runtime.mightSleep("the synchronous NVMe \(what)")
        } catch {
            throw .badRequest("\(what) waits for its completion, which must not be done from an ISR or DPC: "
                              + "from a completion handler use readAsync/writeAsync or submitRead/submitWrite")
        }
    }

    /// Submits `command` and waits for its completion, up to ``commandTimeout``.
    @discardableResult
    func execute(_ command: NVMeCommand, on queue: NVMeQueuePair, _ what: String) throws(Failure) -> NVMeCompletion {
        try mayWait(what)
        let identifier = try submit(command, to: queue, as: .waiting)
        let start = monotonicNanoseconds()
        let deadline = start + commandTimeout.wholeNanoseconds
        var nextCheck = start + Self.statusInterval.wholeNanoseconds
        while true {
            var outcome: NVMeCompletion?? = nil
            if completion == .poll {
                pollForWaiter(queue)
                outcome = queue.outcome(of: identifier)
            } else {
                _ = completed.wait(timeout: Self.statusInterval) {
                    outcome = queue.outcome(of: identifier)
                    return outcome != nil
                }
            }
            if let outcome {
                guard let entry = outcome else { throw failure ?? .stopped }
                guard entry.status.succeeded else {
                    throw .commandFailed(what, statusType: entry.status.type, statusCode: entry.status.code)
                }
                return entry
            }
            let now = monotonicNanoseconds()
            try checkWhileWaiting(now: now, nextCheck: &nextCheck) { queue.abandon(identifier) }
            guard now < deadline else {
                queue.abandon(identifier)
                throw .timedOut(what)
            }
        }
    }

    /// During a wait for commands: checks the controller's health once every
    /// ``statusInterval`` (when `now` has reached `nextCheck`); if it has failed, `abandon`
    /// gives up what is outstanding and the failure is thrown.
    private func checkWhileWaiting(now: UInt64, nextCheck: inout UInt64, abandoning abandon: () -> Void) throws(Failure) {
        guard now >= nextCheck else { return }
        nextCheck = now + Self.statusInterval.wholeNanoseconds
        do {
            try checkController()
        } catch {
            abandon()
            throw error
        }
    }

    /// Submits `commands` together, each with its own identifier, and waits until every one
    /// has completed (up to ``commandTimeout``): the controller works on them at once, and the
    /// caller waits one round trip instead of one per command. Returns the completions in the
    /// order of `commands`; throws the first failed command's failure (once all completed), or
    /// the controller's loss or a timeout (the commands still out are abandoned).
    func executeTogether(_ commands: [(NVMeCommand, String)], on queue: NVMeQueuePair) throws(Failure) -> [NVMeCompletion] {
        guard let first = commands.first else { return [] }
        try mayWait(first.1)
        var identifiers: [UInt16] = []
        var results: [NVMeCompletion?] = Array(repeating: nil, count: commands.count)
        var lost = false
        func abandonOutstanding() {
            for (index, identifier) in identifiers.enumerated() where results[index] == nil { queue.abandon(identifier) }
        }
        for (command, _) in commands {
            do { identifiers.append(try submit(command, to: queue, as: .waiting)) } catch {
                abandonOutstanding()
                throw error
            }
        }
        /// Takes the outcomes that arrived; true once every command has one (or one was lost).
        func collect() -> Bool {
            for (index, identifier) in identifiers.enumerated() where results[index] == nil {
                guard let outcome = queue.outcome(of: identifier) else { continue }
                guard let entry = outcome else {
                    lost = true
                    return true
                }
                results[index] = entry
            }
            return !results.contains { $0 == nil }
        }
        let start = monotonicNanoseconds()
        let deadline = start + commandTimeout.wholeNanoseconds
        var nextCheck = start + Self.statusInterval.wholeNanoseconds
        while true {
            // Polled as well as waited for: under emulation the interrupt's way to this
            // thread (eventfd, the ISR's thread, the wake-up) can take longer than the
            // command, and the start waits for these rounds one after the other.
            var done = completion == .poll ? false : completed.wait(timeout: Self.togetherPollInterval) { collect() }
            if !done {
                pollForWaiter(queue)
                done = collect()
            }
            if lost {
                abandonOutstanding()
                throw failure ?? .stopped
            }
            if done {
                for (index, entry) in results.enumerated() where !entry!.status.succeeded {
                    throw .commandFailed(commands[index].1, statusType: entry!.status.type, statusCode: entry!.status.code)
                }
                return results.map { $0! }
            }
            let now = monotonicNanoseconds()
            try checkWhileWaiting(now: now, nextCheck: &nextCheck) { abandonOutstanding() }
            guard now < deadline else {
                abandonOutstanding()
                let waiting = results.indices.filter { results[$0] == nil }.map { commands[$0].1 }
                throw .timedOut(waiting.joined(separator: ", "))
            }
        }
    }

    /// How often ``executeTogether(_:on:)`` looks at the completion queue itself.
    private static let togetherPollInterval: Duration = .microseconds(500)

    /// A waiter's turn at polling: takes `queue`'s completions, handing tagged and closure
    /// ones over as ``pollCompletions()`` does.
    private func pollForWaiter(_ queue: NVMeQueuePair) {
        if queue !== admin {
            handOverPolled(queue, { _ in }, visiting: false)
        } else {
            var unused = 0
            do {
                _ = try queue.service(batchCount: &unused)
            } catch {
                lose(.deviceLost("reading completion queue \(queue.identifier): \(error)"))
            }
        }
    }

    @discardableResult
    func adminCommand(_ command: NVMeCommand, _ what: String) throws(Failure) -> NVMeCompletion {
        try execute(command, on: admin, what)
    }

    /// Identify into the bounce buffer; returns its 4 KiB.
    func identify(_ structure: NVMeIdentifyStructure, namespace: UInt32 = 0) throws -> NVMeIdentifyData {
        try bounce.withLock { buffers in
            try adminCommand(.identify(structure, namespace: namespace, into: buffers.data.deviceAddress),
                             "Identify (CNS \(structure.rawValue), namespace \(namespace))")
            return NVMeIdentifyData(try buffers.data.read(NVMeIdentifyData.size))
        }
    }

    // MARK: Namespaces

    /// The active namespace `identifier` names, or the first active one for nil. Refuses an
    /// inactive or unknown ID with ``Failure/badRequest(_:)`` naming the active ones.
    public func namespace(_ identifier: UInt32?) throws(Failure) -> Namespace {
        guard let identifier else {
            guard defaultNamespace.identifier != 0 else { throw .badRequest("the controller has no active namespace") }
            return defaultNamespace
        }
        if identifier == defaultNamespace.identifier { return defaultNamespace }
        for namespace in namespaces where namespace.identifier == identifier { return namespace }
        let active = namespaces.map { "\($0.identifier)" }.joined(separator: ", ")
        throw .badRequest("namespace \(identifier) is not active; the active ones are: \(active.isEmpty ? "none" : active)")
    }

    /// Refuses blocks outside `namespace`.
    func checkRange(_ lba: UInt64, _ blocks: Int, in namespace: Namespace) throws(Failure) {
        guard lba <= namespace.blockCount, UInt64(blocks) <= namespace.blockCount - lba else {
            throw .badRequest("blocks \(lba)..<\(lba &+ UInt64(blocks)) are beyond namespace \(namespace.identifier)'s \(namespace.blockCount)")
        }
    }

    // MARK: Reads, writes and flush through the bounce buffer

    /// Points PRP1 at the bounce buffer's first page and PRP2 at its second, or at a PRP list
    /// of the pages after the first.
    private func dataPointers(_ bytes: Int, _ buffers: BounceBuffer) throws(DeviceError) -> (UInt64, UInt64) {
        let pageSize = Self.pageSize
        let pages = (bytes + pageSize - 1) / pageSize
        let base = buffers.data.deviceAddress
        switch pages {
        case 1: return (base, 0)
        case 2: return (base, base + UInt64(pageSize))
        default:
            let entrySize = MemoryLayout<UInt64>.size
            for page in 1..<pages {
                try buffers.prpList.store64(base + UInt64(page * pageSize), at: (page - 1) * entrySize)
            }
            return (base, buffers.prpList.deviceAddress)
        }
    }

    private func transfer(_ opcode: NVMeOpcode, _ namespace: Namespace, lba: UInt64, blocks: Int,
                          _ buffers: BounceBuffer) throws {
        let most = maximumTransfer / namespace.blockSize
        guard blocks > 0, blocks <= most else {
            throw Failure.badRequest("a transfer is 1 to \(most) blocks of namespace \(namespace.identifier), not \(blocks)")
        }
        try checkRange(lba, blocks, in: namespace)
        let (prp1, prp2) = try dataPointers(blocks * namespace.blockSize, buffers)
        try execute(.transfer(opcode, namespace: namespace.identifier, lba: lba, blocks: blocks, prp1: prp1, prp2: prp2),
                    on: submissionQueue(), opcode == .read ? "Read" : "Write")
    }

    /// Reads `blocks` blocks from `lba` of `namespace` (the first active one when nil).
    /// One synchronous request at a time (the bounce buffer is shared); never from an ISR or DPC.
    public func read(lba: UInt64, blocks: Int, namespace: UInt32? = nil) throws -> [UInt8] {
        try mayWait("Read")
        let namespace = try self.namespace(namespace)
        return try bounce.withLock { buffers in
            try transfer(.read, namespace, lba: lba, blocks: blocks, buffers)
            return try buffers.data.read(blocks * namespace.blockSize)
        }
    }

    /// Writes whole blocks of `data` at `lba` of `namespace` (the first active one when nil).
    public func write(lba: UInt64, _ data: [UInt8], namespace: UInt32? = nil) throws {
        try mayWait("Write")
        let namespace = try self.namespace(namespace)
        guard data.count % namespace.blockSize == 0 else {
            throw Failure.badRequest("\(data.count) bytes is not a whole number of \(namespace.blockSize)-byte blocks")
        }
        try bounce.withLock { buffers in
            guard data.count <= buffers.data.size else {
                throw Failure.badRequest("a transfer is at most \(maximumTransfer) bytes, not \(data.count)")
            }
            try buffers.data.write(data)
            try transfer(.write, namespace, lba: lba, blocks: data.count / namespace.blockSize, buffers)
        }
    }

    /// Commits written data of `namespace` (the first active one when nil) to stable media.
    public func flush(namespace: UInt32? = nil) throws {
        try mayWait("Flush")
        let namespace = try self.namespace(namespace)
        _ = try bounce.withLock { _ in
            try execute(NVMeCommand(.flush, namespace: namespace.identifier), on: submissionQueue(), "Flush")
        }
    }
}
