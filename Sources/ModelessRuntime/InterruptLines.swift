import ModelessDevice
import ModelessSystem
import Synchronization

/// A runtime's attached vectors, each served by its own thread pinned to a CPU at interrupt
/// priority: the wait threads of user mode, the interrupt lines of the kernel emulation.
final class InterruptLines: @unchecked Sendable {
    private let options: RuntimeOptions
    private let state = Mutex<(next: Int32, attached: [InterruptAttachment], refusals: [String])>((0, [], []))

    init(options: RuntimeOptions) {
        self.options = options
    }

    /// How many vectors are attached.
    var count: Int { state.withLock { $0.attached.count } }

    /// Scheduling requests the system refused for these threads.
    var refusals: [String] { state.withLock { $0.refusals } }

    /// Attaches `vector` and starts its thread, named `role/name`, running `serve`.
    func attach(_ vector: InterruptVector, name: String, role: String,
                acknowledge: @escaping @Sendable () -> UInt64, isr: @escaping @Sendable (UInt64) -> Void,
                serve: @escaping @Sendable (InterruptAttachment) -> Void) throws(RuntimeError) -> InterruptAttachment {
        let identifier = state.withLock { state in
            defer { state.next += 1 }
            return state.next
        }
        let cpu = Int(identifier) % options.cpus
        do {
            let attachment = try InterruptAttachment(name: name, identifier: identifier, cpu: cpu, vector: vector,
                                                     acknowledge: acknowledge, isr: isr)
            let thread = try SystemThread(name: "\(role)/\(name)", placement: .init(cpu: cpu, realtimePriority: options.interruptPriority)) {
                serve(attachment)
            }
            attachment.thread = thread
            state.withLock { state in
                state.attached.append(attachment)
                state.refusals += thread.outcome.refusals.map { "\(role) thread \(name): \($0)" }
            }
            return attachment
        } catch {
            throw RuntimeError("cannot attach \(name): \(error)")
        }
    }

    func detach(_ attachment: InterruptAttachment) {
        state.withLock { $0.attached.removeAll { $0 === attachment } }
        attachment.detach()
    }

    func detachAll() {
        let all = state.withLock { state in defer { state.attached.removeAll() }; return state.attached }
        all.forEach { $0.detach() }
    }
}

extension DPCEngine {
    /// The DPC threads for a runtime started with `options`.
    static func start(_ options: RuntimeOptions, depth: InterruptDepth, keys: ThreadLocalKeys) throws(RuntimeError) -> DPCEngine {
        do {
            return try DPCEngine(cpus: options.cpus, priority: options.dpcPriority, trace: options.trace,
                                 verifier: options.verifier, depth: depth, keys: keys)
        } catch {
            throw RuntimeError("cannot start DPC threads: \(error)")
        }
    }
}
