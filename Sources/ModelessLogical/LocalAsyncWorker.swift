import ModelessSystem

/// The thread that runs asynchronous requests between consumers and providers of one
/// container, in the order they were sent, and calls their completion handlers.
final class LocalAsyncWorker: @unchecked Sendable {
    private let lock = ConditionLock()
    private var queue: [@Sendable () -> Void] = []
    private var stopping = false
    private var thread: SystemThread?

    init(name: String) throws(SystemError) {
        thread = try SystemThread(name: String(name.prefix(15))) { [self] in run() }
    }

    /// Queues `work`; fails once the container is shutting down.
    func submit(_ work: @escaping @Sendable () -> Void) throws(LogicalDeviceError) {
        try lock.withLock { () throws(LogicalDeviceError) in
            guard !stopping else { throw LogicalDeviceError(.notOpen, "the container is shutting down") }
            queue.append(work)
            lock.signal()
        }
    }

    /// Runs what is queued, then ends the thread.
    func stop() {
        lock.withLock {
            stopping = true
            lock.signal()
        }
        thread?.join()
        thread = nil
    }

    private func run() {
        while true {
            let batch: [@Sendable () -> Void] = lock.withLock {
                while queue.isEmpty && !stopping { lock.wait() }
                defer { queue.removeAll(keepingCapacity: true) }
                return queue
            }
            if batch.isEmpty { return }
            for work in batch { work() }
        }
    }
}
