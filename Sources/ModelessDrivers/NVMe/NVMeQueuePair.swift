#if canImport(Glibc)
import Glibc
#endif
import ModelessDevice
import ModelessRuntime
import ModelessSystem

/// A handler of an asynchronous command given as a closure: the completion entry, or nil when
/// the controller was lost before completing the command.
typealias NVMeCompletionHandler = @Sendable (NVMeCompletion?) -> Void

/// What a command identifier is in use for.
enum NVMeSlot: Equatable {
    case free
    /// A synchronous waiter looks for its completion.
    case waiting
    /// Completed; the waiter has yet to take the entry.
    case done
    /// The controller was lost before completing it; the waiter has yet to learn it.
    case lost
    /// The waiter gave up (timed out); the completion, if it ever comes, frees the identifier.
    case abandoned
    /// Completes to a closure.
    case closure
    /// Completes with the caller's tag to the tagged handler or a poller.
    case tagged
}

/// One submission queue and its completion queue in DMA memory, with their doorbells, and
/// what each command in flight waits for.
///
/// Everything that changes is in ``State``, behind one `SpinLock`: submitters, the ISR, the
/// DPC and pollers take it for a few stores each, so the ISR never waits for a sleeping thread.
/// Command identifiers come from a preallocated free list of `entries − 1` (the most commands
/// a queue holds) and index fixed tables, so two commands in flight never share one and
/// nothing is allocated per command.
final class NVMeQueuePair: @unchecked Sendable {
    let identifier: UInt16
    let entries: Int
    let submissions: DMABuffer
    let completions: DMABuffer
    private let registers: MMIORegion
    private let submissionTail: Register<UInt32>
    private let completionHead: Register<UInt32>
    /// Where the queue stands, saved for a successor before every doorbell write.
    private let record: NVMeQueueRecord
    private let state: SpinLock<State>

    struct State {
        var tail = 0
        /// The tail last written to the doorbell: behind `tail` while submissions are batched.
        var ringedTail = 0
        /// Open batches (``plug()`` without its ``unplug()``): while any is, submissions only
        /// write their entries, and the last unplug writes the tail once for all of them.
        var plugged = 0
        var head = 0
        /// The phase tag of entries the controller has posted but this driver not yet taken.
        var phase = true
        /// Commands submitted whose completion entry has not been taken yet.
        var awaited = 0
        /// The generation of the record's last save.
        var generation: UInt64 = 0
        var free: [UInt16]
        var slots: [NVMeSlot]
        var entries: [NVMeCompletion]
        var tags: [UInt64]
        var handlers: [NVMeCompletionHandler?]
        /// Tagged completions and closure completions, taken by the ISR for the DPC (or by a
        /// poller without a visitor); preallocated to the queue's size.
        var readyTagged: [NVMeIOCompletion]
        var readyClosures: [(NVMeCompletionHandler, NVMeCompletion?)]
        /// How many of ``readyClosures`` were taken (they are cleared once all were).
        var readyClosuresTaken = 0
    }

    /// What a pass over the completion queue found.
    struct Found {
        var taken = 0
        /// Synchronous waiters have results to look at.
        var synchronous = false
        /// Tagged or closure completions wait in the ready lists.
        var ready = false
    }

    /// The queue `identifier` of `entries` on `submissions` and `completions` (views of the
    /// controller's kept memory), saving where it stands in `record`. With `fresh` the rings
    /// and the record are cleared; without, they are left as a predecessor left them, for
    /// ``resume(deadline:)``.
    init(identifier: UInt16, entries: Int, submissions: DMABuffer, completions: DMABuffer, record: NVMeQueueRecord,
         fresh: Bool, registers: MMIORegion, doorbellStride: Int, runtime: any DriverRuntime) throws(DeviceError) {
        self.identifier = identifier
        self.entries = entries
        self.registers = registers
        self.submissions = submissions
        self.completions = completions
        self.record = record
        if fresh {
            try submissions.fill(0)
            try completions.fill(0)
            try record.clear()
        }
        submissionTail = NVMeRegister.submissionTailDoorbell(identifier, stride: doorbellStride)
        completionHead = NVMeRegister.completionHeadDoorbell(identifier, stride: doorbellStride)
        let blank = NVMeCompletion(result: 0, submissionQueueHead: 0, submissionQueue: 0, identifier: 0, phase: false,
                                   status: NVMeStatus(rawValue: 0))
        var readyTagged: [NVMeIOCompletion] = []
        readyTagged.reserveCapacity(entries)
        state = runtime.makeSpinLock("nvme queue \(identifier)", State(
            free: (0..<UInt16(entries - 1)).reversed(), slots: Array(repeating: .free, count: entries),
            entries: Array(repeating: blank, count: entries), tags: Array(repeating: 0, count: entries),
            handlers: Array(repeating: nil, count: entries), readyTagged: readyTagged, readyClosures: []))
    }

    // MARK: Submission

    /// Writes `command` at the tail with a free identifier recorded as `slot` (with `tag` or
    /// `handler`), rings the doorbell (unless a batch is open: see ``plug()``) and returns the
    /// identifier. Throws, submitting nothing,
    /// when `entries − 1` commands are in flight; a ring that can no longer be written (freed
    /// by ``free()``) is reported as the device lost.
    @discardableResult
    func submit(_ command: NVMeCommand, as slot: NVMeSlot, tag: UInt64 = 0,
                handler: NVMeCompletionHandler? = nil) throws(NVMeController.Failure) -> UInt16 {
        let outcome: Result<UInt16, NVMeController.Failure> = state.withLock { state in
            guard let identifier = state.free.popLast() else {
                return .failure(.badRequest("queue \(self.identifier) already has \(entries - 1) commands in flight, its most"))
            }
            var command = command
            command.identifier = identifier
            do {
                try command.store(in: submissions, at: state.tail &* NVMeCommand.entrySize)
            } catch {
                state.free.append(identifier)
                return .failure(.deviceLost("writing submission queue \(self.identifier): \(error)"))
            }
            let index = Int(identifier)
            state.slots[index] = slot
            state.tags[index] = tag
            if let handler { state.handlers[index] = handler }
            state.tail = state.tail + 1 == entries ? 0 : state.tail + 1
            state.awaited += 1
            do { try save(&state) } catch {
                return .failure(.deviceLost("saving submission queue \(self.identifier)'s record: \(error)"))
            }
            if state.plugged == 0 {
                state.ringedTail = state.tail
                registers.store(UInt32(state.tail), to: submissionTail)
            }
            return .success(identifier)
        }
        return try outcome.get()
    }

    /// Opens a batch of submissions: until the matching ``unplug()``, submissions write their
    /// entries but not the doorbell (the block layer's plug). Batches nest.
    func plug() {
        state.withLock { $0.plugged += 1 }
    }

    /// Closes a batch; the last one open writes the submission tail doorbell once for every
    /// entry written since the first plug.
    func unplug() {
        state.withLock { state in
            state.plugged -= 1
            if state.plugged == 0 && state.ringedTail != state.tail {
                state.ringedTail = state.tail
                registers.store(UInt32(state.tail), to: submissionTail)
            }
        }
    }

    // MARK: Completion

    /// Takes every new completion (phase tag matching) in order and files it: a synchronous
    /// command's entry for its waiter; a tagged one's into `batch` when given (a poller's
    /// visitor, which gets `batchCount` filled) or else the ready list; a closure one's handler
    /// to the ready list. Then writes the head doorbell once. Builds nothing.
    func service(into batch: UnsafeMutableBufferPointer<NVMeIOCompletion>? = nil,
                 batchCount: inout Int) throws(DeviceError) -> Found {
        let outcome: Result<Found, DeviceError> = state.withLock { state in
            var found = Found()
            while true {
                let offset = state.head &* NVMeCompletion.entrySize
                let entry: NVMeCompletion
                do throws(DeviceError) {
                    guard try NVMeCompletion.phase(in: completions, at: offset) == state.phase else { break }
                    entry = try NVMeCompletion(in: completions, at: offset)
                } catch {
                    return .failure(error)
                }
                found.taken += 1
                state.head += 1
                if state.head == entries {
                    state.head = 0
                    state.phase.toggle()
                }
                let index = Int(entry.identifier)
                guard index < entries else { continue }  // Not an identifier this driver gave out.
                switch state.slots[index] {
                case .waiting:
                    state.slots[index] = .done
                    state.entries[index] = entry
                    found.synchronous = true
                case .tagged:
                    let completion = NVMeIOCompletion(tag: state.tags[index], entry)
                    if let batch, batchCount < batch.count {
                        batch[batchCount] = completion
                        batchCount += 1
                    } else {
                        state.readyTagged.append(completion)
                        found.ready = true
                    }
                    release(index, &state)
                case .closure:
                    if let handler = state.handlers[index] { state.readyClosures.append((handler, entry)) }
                    state.handlers[index] = nil
                    release(index, &state)
                    found.ready = true
                case .abandoned:
                    release(index, &state)
                case .free, .done, .lost:
                    break  // A completion for nothing in flight: ignored.
                }
            }
            if found.taken > 0 {
                state.awaited = max(0, state.awaited - found.taken)
                do throws(DeviceError) { try save(&state) } catch { return .failure(error) }
                registers.store(UInt32(state.head), to: completionHead)
            }
            return .success(found)
        }
        return try outcome.get()
    }

    /// Saves where the queue stands (under the lock, before the doorbell write it leads to).
    @inline(__always)
    private func save(_ state: inout State) throws(DeviceError) {
        state.generation &+= 1
        try record.save(NVMeQueueRecord.Snapshot(generation: state.generation, tail: state.tail, head: state.head,
                                                 phase: state.phase, awaited: state.awaited))
    }

    private func release(_ index: Int, _ state: inout State) {
        state.slots[index] = .free
        state.free.append(UInt16(index))
    }

    /// Moves the ready tagged completions into `batch` (at most its size; the rest stay).
    /// Returns how many it moved.
    func takeReady(into batch: UnsafeMutableBufferPointer<NVMeIOCompletion>) -> Int {
        state.withLock { state in
            let count = min(batch.count, state.readyTagged.count)
            for index in 0..<count { batch[index] = state.readyTagged[index] }
            state.readyTagged.removeFirst(count)
            return count
        }
    }

    /// Takes the oldest ready closure completion, to run outside the lock; nil when there is none.
    func takeReadyClosure() -> (NVMeCompletionHandler, NVMeCompletion?)? {
        state.withLock { state in
            guard state.readyClosuresTaken < state.readyClosures.count else { return nil }
            let next = state.readyClosures[state.readyClosuresTaken]
            state.readyClosuresTaken += 1
            if state.readyClosuresTaken == state.readyClosures.count {
                state.readyClosures.removeAll(keepingCapacity: true)
                state.readyClosuresTaken = 0
            }
            return next
        }
    }

    /// A synchronous command's outcome once it has one: its entry, or nil when the controller
    /// was lost first (`.some(nil)`); `nil` while it is still in flight. Frees the identifier
    /// once the outcome is taken.
    func outcome(of identifier: UInt16) -> NVMeCompletion?? {
        state.withLock { state in
            let index = Int(identifier)
            switch state.slots[index] {
            case .done:
                release(index, &state)
                return .some(state.entries[index])
            case .lost:
                release(index, &state)
                return .some(nil)
            default:
                return nil
            }
        }
    }

    /// Gives up waiting for a synchronous command: its identifier is freed when (if ever) it completes.
    func abandon(_ identifier: UInt16) {
        state.withLock { state in
            let index = Int(identifier)
            if state.slots[index] == .waiting { state.slots[index] = .abandoned } else { release(index, &state) }
        }
    }

    /// Fails every command in flight because the controller was lost: waiters see `.lost`,
    /// tagged and closure commands go to the ready lists with no entry. Returns whether any did.
    func failAll() -> Found {
        state.withLock { state in
            var found = Found()
            for index in 0..<entries {
                switch state.slots[index] {
                case .waiting:
                    state.slots[index] = .lost
                    found.synchronous = true
                case .tagged:
                    state.readyTagged.append(NVMeIOCompletion(tag: state.tags[index], nil))
                    release(index, &state)
                    found.ready = true
                case .closure:
                    if let handler = state.handlers[index] { state.readyClosures.append((handler, nil)) }
                    state.handlers[index] = nil
                    release(index, &state)
                    found.ready = true
                case .abandoned:
                    release(index, &state)
                case .free, .done, .lost:
                    break
                }
            }
            return found
        }
    }

    // MARK: Resumption

    /// Picks the queue up where a predecessor's record says it stood, without a controller
    /// reset: rings the saved submission tail (entries written but not yet rung are then
    /// executed), waits until every command the predecessor submitted has completed, taking
    /// their completion entries without reporting them (ublk reissues those requests), and
    /// writes the completion head. The queue is then empty, every identifier free, and new
    /// commands reuse none a predecessor's command still holds. Call before the ISRs are
    /// attached. Throws ``NVMeController/Failure/timedOut(_:)`` when the commands are not all
    /// done by `deadline` (CLOCK_MONOTONIC nanoseconds), and ``NVMeController/Failure/badRequest(_:)``
    /// when the record is missing or out of range: the caller then resets the controller.
    /// Returns how many completions it took.
    func resume(deadline: UInt64) throws(NVMeController.Failure) -> Int {
        let saved: NVMeQueueRecord.Snapshot
        do {
            guard let loaded = try record.load() else { throw NVMeController.Failure.badRequest("queue \(identifier) has no whole saved record") }
            saved = loaded
        } catch let error as NVMeController.Failure { throw error } catch {
            throw .deviceLost("reading queue \(identifier)'s record: \(error)")
        }
        guard saved.tail < entries, saved.head < entries, saved.awaited < entries else {
            throw .badRequest("queue \(identifier)'s record is out of range (tail \(saved.tail), head \(saved.head), \(saved.awaited) awaited, \(entries) entries)")
        }
        registers.store(UInt32(saved.tail), to: submissionTail)
        var head = saved.head
        var phase = saved.phase
        var taken = 0
        var idle = 0
        while taken < saved.awaited {
            let posted: Bool
            do { posted = try NVMeCompletion.phase(in: completions, at: head &* NVMeCompletion.entrySize) == phase } catch {
                throw .deviceLost("reading completion queue \(identifier): \(error)")
            }
            if posted {
                taken += 1
                head += 1
                if head == entries {
                    head = 0
                    phase.toggle()
                }
                idle = 0
                continue
            }
            guard monotonicNanoseconds() < deadline else {
                throw .timedOut("queue \(identifier): \(saved.awaited - taken) of the \(saved.awaited) command(s) the predecessor left in flight still not completed")
            }
            idle += 1
            if idle > 64 { usleep(50) }
        }
        registers.store(UInt32(head), to: completionHead)
        let outcome: Result<Void, DeviceError> = state.withLock { state in
            state.tail = saved.tail
            state.ringedTail = saved.tail
            state.head = head
            state.phase = phase
            state.awaited = 0
            state.generation = saved.generation
            do throws(DeviceError) { try save(&state) } catch { return .failure(error) }
            return .success(())
        }
        do { try outcome.get() } catch { throw .deviceLost("saving queue \(identifier)'s record: \(error)") }
        return taken
    }

    /// Saves where the queue stands once, whether or not it has been used: every queue a
    /// successor may resume has a record from the start on.
    func saveRecord() throws(DeviceError) {
        let outcome: Result<Void, DeviceError> = state.withLock { state in
            do throws(DeviceError) { try save(&state) } catch { return .failure(error) }
            return .success(())
        }
        try outcome.get()
    }

    /// Clears the rings, the record and what the queue knows of them (for a controller reset
    /// after a resumption was refused): the queue is as a fresh one.
    func clear() throws(DeviceError) {
        try submissions.fill(0)
        try completions.fill(0)
        try record.clear()
        state.withLock { state in
            state.tail = 0
            state.ringedTail = 0
            state.head = 0
            state.phase = true
            state.awaited = 0
            state.generation = 0
        }
    }

    func free() {
        submissions.free()
        completions.free()
    }
}
