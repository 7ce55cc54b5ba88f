import CLibURing
import ModelessSystem

/// One io_uring (through liburing): the queue of commands a thread hands the kernel and the
/// queue of their completions. Used by one thread at a time; ``close()`` releases it (and
/// the kernel cancels commands still pending on it).
final class IORing {
    private let ring: UnsafeMutablePointer<io_uring>
    private var isOpen = true

    /// A ring of `entries` submission slots; `bigEntries` makes them 128 bytes (SQE128) for
    /// commands with a payload larger than 16 bytes.
    init(entries: UInt32, bigEntries: Bool, what: String) throws(SystemError) {
        ring = .allocate(capacity: 1)
        let status = modeless_uring_init(ring, entries, bigEntries ? 1 : 0)
        guard status == 0 else {
            ring.deallocate()
            throw SystemError("io_uring_queue_init", what, errno: Errno(rawValue: -status))
        }
    }

    deinit { close() }

    /// Releases the ring. Idempotent.
    func close() {
        guard isOpen else { return }
        isOpen = false
        io_uring_queue_exit(ring)
        ring.deallocate()
    }

    /// Queues a uring command (IORING_OP_URING_CMD) for `fd` with the bytes of `command`.
    func queueCommand<Command>(fd: Int32, operation: UInt32, command: Command, userData: UInt64) throws(SystemError) {
        var copy = command
        let status = withUnsafeBytes(of: &copy) { bytes in
            modeless_uring_queue_command(ring, fd, operation, bytes.baseAddress, UInt32(bytes.count), userData)
        }
        guard status == 0 else { throw SystemError("io_uring_get_sqe", "uring command", errno: Errno(rawValue: -status)) }
    }

    /// Queues a read of `length` bytes from `fd` into `buffer`.
    func queueRead(fd: Int32, into buffer: UnsafeMutableRawPointer, length: UInt32, userData: UInt64) throws(SystemError) {
        let status = modeless_uring_queue_read(ring, fd, buffer, length, userData)
        guard status == 0 else { throw SystemError("io_uring_get_sqe", "read", errno: Errno(rawValue: -status)) }
    }

    /// Submits what is queued and waits until at least `count` completions are ready.
    @discardableResult
    func submit(waitingFor count: UInt32 = 0) throws(SystemError) -> Int {
        while true {
            let status = io_uring_submit_and_wait(ring, count)
            if status >= 0 { return Int(status) }
            if status == -Errno.interrupted.rawValue { continue }
            throw SystemError("io_uring_submit", "ring", errno: Errno(rawValue: -status))
        }
    }

    /// The next ready completion, consumed, or nil if none is ready.
    func takeCompletion() -> (userData: UInt64, result: Int32)? {
        var userData: UInt64 = 0
        var result: Int32 = 0
        guard modeless_uring_take_completion(ring, &userData, &result) == 0 else { return nil }
        return (userData, result)
    }

    /// Waits for the next completion and consumes it.
    func waitCompletion() throws(SystemError) -> (userData: UInt64, result: Int32) {
        var userData: UInt64 = 0
        var result: Int32 = 0
        let status = modeless_uring_wait_completion(ring, &userData, &result)
        guard status == 0 else { throw SystemError("io_uring_wait_cqe", "ring", errno: Errno(rawValue: -status)) }
        return (userData, result)
    }
}
