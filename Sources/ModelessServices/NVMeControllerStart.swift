import ModelessDrivers
import ModelessSystem

/// An NVMe controller started on a thread of its own, so that a standby's ublk recovery runs
/// beside it (docs/kernel-interfaces.md, "The stall per kill"): the ublk queues are made and
/// fetch while the controller resumes, and their first requests wait for it.
final class NVMeControllerStart: @unchecked Sendable {
    private let lock = ConditionLock()
    private var outcome: Result<NVMeController, any Error>?
    private var thread: SystemThread?
    /// When the start ended (CLOCK_MONOTONIC nanoseconds), for the recovery line.
    private(set) var endedAt: UInt64 = 0

    /// A controller already started.
    init(started controller: NVMeController) {
        outcome = .success(controller)
        endedAt = monotonicNanoseconds()
    }

    /// Starts `make` on a new thread (ordinary scheduling: a real-time thread here would hold
    /// off the kernel's work on the dead server's ublk device, which runs on the same CPUs).
    init(_ make: @escaping @Sendable () throws -> NVMeController) throws {
        thread = try SystemThread(name: "nvme start") { [self] in
            let made = Result { try make() }
            lock.withLock {
                endedAt = monotonicNanoseconds()
                outcome = made
                lock.broadcast()
            }
        }
    }

    /// The controller once its start has ended, or the start's error.
    func wait() throws -> NVMeController {
        try lock.withLock { () -> Result<NVMeController, any Error> in
            while outcome == nil { lock.wait() }
            return outcome!
        }.get()
    }

    /// Waits for the start's thread to end (after ``wait()``, at once).
    func join() {
        guard let running = thread else { return }
        thread = nil
        running.join()
    }

    deinit { join() }
}
