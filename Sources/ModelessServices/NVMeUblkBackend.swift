import ModelessDevice
import ModelessDrivers
import ModelessSystem
import ModelessUblk
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The NVMe driver behind a ublk device, without a logical hop: each ublk tag's buffer is a
/// chunk of a ``DMAPool`` the controller reaches through the IOMMU, so the kernel copies a
/// write's data straight into the pages the controller then reads, and a read's data out of
/// the pages it wrote. Every tag is in flight at once: the queue's thread submits tagged
/// commands and goes on fetching; the driver's completion DPC files each result for the
/// tag's queue and signals its eventfd, and the queue's thread commits it.
///
/// NVMe tags carry the ublk queue in their upper 32 bits and the ublk tag in the lower ones.
final class NVMeUblkBackend: UblkBackend, UblkBufferProvider, @unchecked Sendable {
    /// The controller's device: the tags' DMA buffers are mapped for it.
    let device: any DeviceAccess
    let maximumIOBytes: Int
    private let start: NVMeControllerStart
    private let namespaceChoice: UInt32?
    /// The controller, the namespace served and its geometry, once the controller has started.
    private let serving = Mutex<Result<Serving, UblkError>?>(nil)
    private let pools = Mutex<[Int: DMAPool]>([:])
    private let queues = Mutex<[Int: NVMeUblkQueue]>([:])
    /// Pools made ahead (by a warm standby, before its takeover), taken by ``prepare(queue:depth:bytes:)``
    /// when their size fits; the rest are freed by ``releaseUnusedPools()``.
    private let ahead: Mutex<[DMAPool]>

    /// What requests are served with: found once the controller has started.
    struct Serving {
        let controller: NVMeController
        let namespace: NVMeController.Namespace
        let geometry: UblkGeometry
        /// The largest request the controller takes for the namespace, in bytes.
        let maximumIOBytes: Int
    }

    /// Reads the namespace's geometry and what the controller offers besides Read and Write.
    /// `pools`, DMA memory made ahead on the controller's device, become the tags' buffers where
    /// their chunk size and count fit (they are this backend's from then on).
    init(controller: NVMeController, namespace: UInt32?, pools: [DMAPool] = []) throws {
        device = controller.device
        start = NVMeControllerStart(started: controller)
        namespaceChoice = namespace
        ahead = Mutex(pools)
        let found = try Self.serving(controller, namespace)
        maximumIOBytes = found.maximumIOBytes
        serving.withLock { $0 = .success(found) }
        controller.setCompletionHandler { [weak self] completion in self?.complete(completion) }
    }

    /// A backend for recovering a ublk device of requests up to `maximumIOBytes` while the
    /// controller on `device` is still starting (`start`): the queues are made and fetch at once,
    /// and their first requests wait for the start. Requests the controller turns out unable
    /// to take whole fail with -EINVAL.
    init(device: any DeviceAccess, starting start: NVMeControllerStart, namespace: UInt32?, maximumIOBytes: Int, pools: [DMAPool] = []) {
        self.device = device
        self.start = start
        namespaceChoice = namespace
        self.maximumIOBytes = maximumIOBytes
        ahead = Mutex(pools)
    }

    deinit { releaseUnusedPools() }

    /// The namespace `choice` (the first active one when nil) of `controller`, checked for the
    /// kernel, with its geometry.
    private static func serving(_ controller: NVMeController, _ choice: UInt32?) throws(UblkError) -> Serving {
        let active = controller.identity.namespaces
        guard let chosen = choice.map({ id in active.first { $0.identifier == id } }) ?? active.first else {
            let list = active.map { "\($0.identifier)" }.joined(separator: ", ")
            throw UblkError(.noSuchDevice, choice.map { "namespace \($0) is not active on the controller; the active ones are: \(list.isEmpty ? "none" : list)" }
                            ?? "the controller has no active namespace")
        }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        guard chosen.blockSize >= 512, chosen.blockSize <= page, chosen.metadataSize == 0 else {
            throw UblkError(.invalidArgument, "namespace \(chosen.identifier) has \(chosen.blockSize)-byte blocks with \(chosen.metadataSize) bytes of metadata: "
                            + "the kernel takes blocks of 512 to \(page) bytes without metadata (format the namespace with such an LBA format)")
        }
        let offered: NVMeOptionalCommands
        do { offered = try controller.optionalCommands() } catch {
            throw UblkError(.system, "the controller's optional commands cannot be read: \(error)")
        }
        return Serving(controller: controller, namespace: chosen,
                       geometry: UblkGeometry(blockSize: chosen.blockSize, blockCount: chosen.blockCount, flushes: offered.volatileWriteCache,
                                              writesZeroes: offered.writeZeroes, discards: offered.datasetManagement),
                       maximumIOBytes: controller.maximumTransferBytes / chosen.blockSize * chosen.blockSize)
    }

    /// The controller and namespace requests are served with, once the controller has started
    /// (waiting for it the first time); the completion handler is registered before anyone
    /// gets it, so before any request is submitted.
    func resolve() -> Result<Serving, UblkError> {
        if let known = serving.withLock({ $0 }) { return known }
        let found: Result<Serving, UblkError>
        do {
            found = .success(try Self.serving(try start.wait(), namespaceChoice))
        } catch let error as UblkError {
            found = .failure(error)
        } catch {
            found = .failure(UblkError(.system, "the NVMe controller did not start: \(error)"))
        }
        return serving.withLock { state in
            if let known = state { return known }
            if case .success(let made) = found {
                made.controller.setCompletionHandler { [weak self] completion in self?.complete(completion) }
            }
            state = found
            return found
        }
    }

    /// The namespace's geometry (waiting for the controller's start), or why the controller
    /// cannot serve.
    var geometry: UblkGeometry {
        get throws(UblkError) { try resolve().get().geometry }
    }

    /// The namespace served (waiting for the controller's start), or why there is none.
    var namespace: Result<NVMeController.Namespace, UblkError> { resolve().map(\.namespace) }

    /// Files a completion for its queue's thread (from the driver's DPC).
    private func complete(_ completion: NVMeIOCompletion) {
        let queue = Int(completion.tag >> 32)
        guard let target = queues.withLock({ $0[queue] }) else { return }
        target.finish(tag: Int(completion.tag & 0xffff_ffff), result: completion.succeeded ? target.pending(Int(completion.tag & 0xffff_ffff)) : -Errno.ioError.rawValue)
    }

    func makeQueueBackend(queue: Int) throws(UblkError) -> any UblkQueueBackend {
        guard let pool = pools.withLock({ $0[queue] }) else {
            throw UblkError(.system, "queue \(queue) has no DMA buffers")
        }
        let backend: NVMeUblkQueue
        do {
            backend = try NVMeUblkQueue(index: queue, backend: self, pool: pool, depth: pool.capacity)
        } catch {
            throw UblkError(.system, "queue \(queue): \(error)")
        }
        queues.withLock { $0[queue] = backend }
        return backend
    }

    // MARK: Buffers: the driver's DMA memory

    func prepare(queue: Int, depth: Int, bytes: Int) throws(UblkError) {
        let chunkSize = (NVMeController.transferChunkSize(dataBytes: bytes) + 63) / 64 * 64
        let made = ahead.withLock { pools -> DMAPool? in
            guard let index = pools.firstIndex(where: { $0.chunkSize == chunkSize && $0.capacity == depth }) else { return nil }
            return pools.remove(at: index)
        }
        if let made {
            pools.withLock { $0[queue] = made }
            return
        }
        do {
            let pool = try DMAPool(device: device, chunkSize: NVMeController.transferChunkSize(dataBytes: bytes), count: depth)
            pools.withLock { $0[queue] = pool }
        } catch {
            throw UblkError(.system, "cannot map \(depth) DMA buffers of \(bytes) bytes for queue \(queue): \(error)")
        }
    }

    func buffer(queue: Int, tag: Int) -> UnsafeMutableRawBufferPointer {
        let pool = pools.withLock { $0[queue]! }
        // In range by construction: the tag's chunk of its own queue's pool.
        return try! pool.buffer.hostMemory(at: tag * pool.chunkSize, count: pool.chunkSize)
    }

    /// Frees the pools made ahead that no queue took. Idempotent.
    func releaseUnusedPools() {
        for pool in ahead.withLock({ pools in defer { pools.removeAll() }; return pools }) { pool.buffer.free() }
    }

    func release(queue: Int) {
        queues.withLock { _ = $0.removeValue(forKey: queue) }
        pools.withLock { $0.removeValue(forKey: queue) }?.buffer.free()
    }
}

/// One ublk queue's requests to the controller.
final class NVMeUblkQueue: UblkAsyncQueueBackend, @unchecked Sendable {
    let index: Int
    /// The backend, which outlives its queues (it drops them when they stop).
    private unowned let backend: NVMeUblkBackend
    /// The controller and namespace, taken from the backend at the first request (by the
    /// queue's thread, the only one that starts requests).
    private var serving: NVMeUblkBackend.Serving?
    private var sectorsPerBlock: UInt64 = 1
    private let pool: DMAPool
    private let event: EventNotifier
    /// Results filed by the DPC for the queue's thread; capacity for every tag.
    private let ready: Mutex<[(Int, Int32)]>
    /// Each tag's result on success (the bytes of a read or write, 0 for the rest), set when
    /// it is submitted; read by the DPC.
    private let successResults: UnsafeMutablePointer<Int32>

    init(index: Int, backend: NVMeUblkBackend, pool: DMAPool, depth: Int) throws {
        self.index = index
        self.backend = backend
        self.pool = pool
        event = try EventNotifier()
        var list: [(Int, Int32)] = []
        list.reserveCapacity(depth)
        ready = Mutex(list)
        successResults = .allocate(capacity: depth)
        successResults.initialize(repeating: 0, count: depth)
    }

    deinit { successResults.deallocate() }

    var completionEvent: Int32 { event.fd }

    func pending(_ tag: Int) -> Int32 { successResults[tag] }

    func finish(tag: Int, result: Int32) {
        ready.withLock { $0.append((tag, result)) }
        try? event.signal()  // fails only if the counter would overflow: the thread is woken anyway
    }

    func takeCompletions(_ body: (Int, Int32) -> Void) {
        withUnsafeTemporaryAllocation(of: (Int, Int32).self, capacity: pool.capacity) { batch in
            let count = ready.withLock { list -> Int in
                let count = list.count
                for (slot, entry) in list.enumerated() { batch[slot] = entry }
                list.removeAll(keepingCapacity: true)
                return count
            }
            for slot in 0..<count { body(batch[slot].0, batch[slot].1) }
        }
    }

    func start(_ request: UblkRequest, tag: Int, buffer: UnsafeMutableRawBufferPointer) -> Int32? {
        if _slowPath(serving == nil) {
            guard case .success(let found) = backend.resolve() else { return -Errno.ioError.rawValue }
            serving = found
            sectorsPerBlock = UInt64(found.namespace.blockSize / 512)
        }
        let serving = serving.unsafelyUnwrapped
        let controller = serving.controller
        let namespace = serving.namespace
        guard request.byteCount <= serving.maximumIOBytes else { return -Errno.invalidArgument.rawValue }
        guard request.startSector % sectorsPerBlock == 0, UInt64(request.sectorCount) % sectorsPerBlock == 0 else {
            return -Errno.invalidArgument.rawValue
        }
        let lba = request.startSector / sectorsPerBlock
        let blocks = Int(UInt64(request.sectorCount) / sectorsPerBlock)
        let nvmeTag = UInt64(index) << 32 | UInt64(tag)
        let chunk = pool.chunk(tag)
        do {
            switch request.operation {
            case .read, .write:
                guard blocks > 0 else { return 0 }
                successResults[tag] = Int32(request.byteCount)
                try controller.submitTransfer(request.operation == .read ? .read : .write, lba: lba, blocks: blocks, chunk: chunk, of: pool,
                                              tag: nvmeTag, namespace: namespace.identifier)
            case .flush:
                successResults[tag] = 0
                try controller.submitFlush(tag: nvmeTag, namespace: namespace.identifier)
            case .writeZeroes:
                guard blocks > 0 else { return 0 }
                guard blocks <= NVMeController.maximumRangeBlocks else { return -Errno.invalidArgument.rawValue }
                successResults[tag] = 0
                try controller.submitWriteZeroes(lba: lba, blocks: blocks, tag: nvmeTag, namespace: namespace.identifier)
            case .discard:
                guard blocks > 0 else { return 0 }
                successResults[tag] = 0
                try controller.submitDeallocate(lba: lba, blocks: blocks, chunk: chunk, of: pool, tag: nvmeTag, namespace: namespace.identifier)
            case .writeSame:
                return -Errno.notSupported.rawValue
            }
        } catch {
            return -Errno.ioError.rawValue
        }
        return nil
    }

    func perform(_ request: UblkRequest, buffer: UnsafeMutableRawBufferPointer) -> Int32 {
        // The queue calls start(_:tag:buffer:) for an asynchronous backend, never this.
        -Errno.notSupported.rawValue
    }

    func close() { event.close() }
}
