import CLibURing
import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// One ublk queue: its own thread (pinned to its CPU), io_uring and per-tag buffers.
///
/// The thread hands the kernel every tag with a FETCH_REQ, then loops: a completion for a
/// tag means the tag's descriptor (in the memory mapped from `/dev/ublkcN`) holds a request;
/// the backend performs it with the tag's buffer, and one COMMIT_AND_FETCH_REQ reports the
/// result and waits for the tag's next request. The kernel ends each tag's last fetch with
/// UBLK_IO_RES_ABORT when the device stops; a write to the stop eventfd (read through the
/// same ring) ends the loop even if it does not.
final class UblkQueue: @unchecked Sendable {
    let index: Int
    let depth: Int
    private let deviceID: UInt32
    private let characterDevice: Int32
    private let descriptors: UnsafeMutableRawPointer
    private let descriptorsLength: Int
    private let backend: any UblkQueueBackend
    private let buffers: any UblkBufferProvider
    private let stopEvent: EventNotifier
    /// Where the completion eventfd's read puts the counter.
    private let completionBuffer = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
    private var thread: SystemThread?
    private let state = ConditionLock()
    private var started = false
    private var startFailure: UblkError?
    private var failures = 0
    private var lastFailure: String?

    /// The user data of the stop eventfd's read; tags are below it.
    private static let stopTag = UInt64.max
    /// The user data of an asynchronous backend's completion eventfd read.
    private static let completionTag = UInt64.max - 1
    /// The backend when it keeps requests in flight (nil: one request at a time, synchronously).
    private var asyncBackend: (any UblkAsyncQueueBackend)?

    /// Maps the queue's descriptors and prepares its buffers and backend (nothing runs yet).
    init(index: Int, depth: Int, deviceID: UInt32, characterDevice: Int32, ioBytes: Int,
         backend: any UblkBackend, buffers: any UblkBufferProvider) throws(UblkError) {
        self.index = index
        self.depth = depth
        self.deviceID = deviceID
        self.characterDevice = characterDevice
        self.buffers = buffers
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        descriptorsLength = (depth * UblkInterface.descriptorSize + page - 1) / page * page
        let offset = UblkInterface.descriptorOffset(queue: index, pageSize: page)
        guard let mapped = mmap(nil, descriptorsLength, PROT_READ, MAP_SHARED | MAP_POPULATE, characterDevice, off_t(offset)),
              mapped != MAP_FAILED
        else {
            throw UblkError(.system, "cannot map queue \(index)'s request descriptors from \(UblkInterface.characterDevicePath(deviceID)): \(Errno.current)")
        }
        descriptors = mapped
        do {
            stopEvent = try EventNotifier()
            try buffers.prepare(queue: index, depth: depth, bytes: ioBytes)
        } catch let error as UblkError {
            munmap(mapped, descriptorsLength)
            throw error
        } catch {
            munmap(mapped, descriptorsLength)
            throw UblkError(.system, "queue \(index): \(error)")
        }
        do {
            self.backend = try backend.makeQueueBackend(queue: index)
            asyncBackend = self.backend as? any UblkAsyncQueueBackend
        } catch {
            buffers.release(queue: index)
            stopEvent.close()
            munmap(mapped, descriptorsLength)
            throw error
        }
    }

    /// Starts the queue's thread (pinned to `cpu`), which sets up its ring and fetches every
    /// tag; ``waitUntilFetching()`` waits for that, so that several queues start at once.
    func launch(cpu: Int?) throws(UblkError) {
        do {
            thread = try SystemThread(name: "ublk\(deviceID)q\(index)", placement: SystemThread.Placement(cpu: cpu)) { [self] in serve() }
        } catch {
            throw UblkError(.system, "cannot start queue \(index)'s thread: \(error)")
        }
    }

    /// Returns once every tag's fetch of a launched queue is with the kernel; throws why its
    /// thread could not get there (the thread has ended then).
    func waitUntilFetching() throws(UblkError) {
        let failure = state.withLock { () -> UblkError? in
            while !started && startFailure == nil { state.wait() }
            return startFailure
        }
        if let failure {
            thread?.join()
            thread = nil
            throw failure
        }
    }

    /// Asks the thread to stop (after STOP_DEV, or when starting failed) and waits for it.
    func stop() {
        guard let thread else { return }
        try? stopEvent.signal()  // an eventfd write fails only when its counter would overflow
        thread.join()
        self.thread = nil
    }

    /// Releases the descriptors, buffers and backend; the thread must have stopped.
    func close() {
        stop()
        backend.close()
        buffers.release(queue: index)
        stopEvent.close()
        munmap(descriptors, descriptorsLength)
    }

    deinit { completionBuffer.deallocate() }

    /// Requests that failed, and the last failure's description.
    var failureSummary: (count: Int, last: String?) { state.withLock { (failures, lastFailure) } }

    // MARK: The queue's thread

    private func serve() {
        let stopBuffer = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
        defer { stopBuffer.deallocate() }
        let ring: IORing
        do {
            // Room for every tag's command, the stop read and the completion read at once.
            ring = try IORing(entries: UInt32(depth + 2), bigEntries: false, what: "ublk queue \(index)")
        } catch {
            return reportStart(UblkError(.system, "\(error)"))
        }
        defer { ring.close() }
        do {
            for tag in 0..<depth { try queue(.fetch, tag: tag, result: 0, on: ring) }
            try ring.queueRead(fd: stopEvent.fd, into: stopBuffer, length: 8, userData: Self.stopTag)
            if let asyncBackend {
                try ring.queueRead(fd: asyncBackend.completionEvent, into: completionBuffer, length: 8, userData: Self.completionTag)
            }
            try ring.submit()
        } catch {
            return reportStart(UblkError(.system, "queue \(index): \(error)"))
        }
        // A refused fetch completes at once; an accepted one only when a request arrives.
        var outstanding = depth
        var stopping = false
        var early: [(UInt64, Int32)] = []
        while let completion = ring.takeCompletion() {
            if completion.result < 0 && completion.userData < Self.completionTag {
                return reportStart(UblkError(
                    .kernelRefused, "the kernel refused UBLK_U_IO_FETCH_REQ for queue \(index), tag \(completion.userData): \(Errno(rawValue: -completion.result))"))
            }
            early.append(completion)
        }
        reportStart(nil)
        for (userData, result) in early { handle(userData, result, ring, &outstanding, &stopping) }
        while outstanding > 0 && !stopping {
            do {
                try ring.submit(waitingFor: 1)
            } catch {
                record("queue \(index) stopped: \(error)")
                return
            }
            while let completion = ring.takeCompletion() {
                handle(completion.userData, completion.result, ring, &outstanding, &stopping)
            }
        }
    }

    private func handle(_ userData: UInt64, _ result: Int32, _ ring: IORing, _ outstanding: inout Int, _ stopping: inout Bool) {
        if userData == Self.stopTag {
            stopping = true
            return
        }
        if userData == Self.completionTag, let asyncBackend {
            do {
                try ring.queueRead(fd: asyncBackend.completionEvent, into: completionBuffer, length: 8, userData: Self.completionTag)
            } catch {
                record("queue \(index): cannot wait for completions: \(error)")
            }
            asyncBackend.takeCompletions { tag, outcome in commit(tag, outcome, ring, &outstanding) }
            return
        }
        let tag = Int(userData)
        guard result == 0 else {
            // UBLK_IO_RES_ABORT: the device is stopping and this tag gets no more requests.
            outstanding -= 1
            if result != UblkInterface.abortResult { record("tag \(tag): the kernel ended its command with \(Errno(rawValue: -result))") }
            return
        }
        let descriptor = descriptors.load(fromByteOffset: tag * UblkInterface.descriptorSize, as: ublksrv_io_desc.self)
        let outcome: Int32
        if let operation = UblkOperation(rawValue: UInt8(truncatingIfNeeded: descriptor.op_flags)) {
            let request = UblkRequest(
                operation: operation, flags: descriptor.op_flags >> 8, startSector: descriptor.start_sector,
                sectorCount: descriptor.nr_sectors)
            if let asyncBackend {
                // In flight: the result comes back through the completion eventfd.
                guard let now = asyncBackend.start(request, tag: tag, buffer: buffers.buffer(queue: index, tag: tag)) else { return }
                outcome = now
            } else {
                outcome = backend.perform(request, buffer: buffers.buffer(queue: index, tag: tag))
            }
        } else {
            outcome = -Errno.notSupported.rawValue
        }
        commit(tag, outcome, ring, &outstanding)
    }

    /// Reports `outcome` for `tag` and fetches the tag's next request.
    private func commit(_ tag: Int, _ outcome: Int32, _ ring: IORing, _ outstanding: inout Int) {
        if outcome < 0 { record("tag \(tag): request failed with \(Errno(rawValue: -outcome))") }
        do {
            try queue(.commitAndFetch, tag: tag, result: outcome, on: ring)
        } catch {
            outstanding -= 1
            record("tag \(tag): cannot commit: \(error)")
        }
    }

    private func queue(_ command: UblkIOCommand, tag: Int, result: Int32, on ring: IORing) throws(SystemError) {
        var io = ublksrv_io_cmd()
        io.q_id = UInt16(index)
        io.tag = UInt16(tag)
        io.result = result
        io.addr = UInt64(UInt(bitPattern: buffers.buffer(queue: index, tag: tag).baseAddress))
        try ring.queueCommand(fd: characterDevice, operation: command.encoded, command: io, userData: UInt64(tag))
    }

    private func reportStart(_ failure: UblkError?) {
        state.withLock {
            if let failure { startFailure = failure } else { started = true }
            state.broadcast()
        }
    }

    private func record(_ failure: String) {
        state.withLock {
            failures += 1
            lastFailure = failure
        }
    }
}
