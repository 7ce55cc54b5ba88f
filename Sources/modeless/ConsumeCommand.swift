import ArgumentParser
import ModelessCommandLine
import ModelessLogical
import ModelessServices
import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

struct Consume: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Open a logical block device and keep reads in flight on it: a consumer to try providers with.",
        discussion: """
            Prints `ready` with the consumer ids once every open succeeded, then keeps --depth \
            asynchronous reads in flight per open until --seconds pass (0: until SIGINT or SIGTERM), \
            and prints how many completed and failed. Exits 0 if none failed, 1 otherwise.
            """)

    @Argument(help: "The device, container/device.")
    var device: String

    @Option(help: "How many times to open the device (each open is its own consumer).")
    var opens = 1

    @Option(help: "Asynchronous reads in flight per open.")
    var depth = 4

    @Option(help: "Seconds to run; 0 runs until a signal.")
    var seconds = 0.0

    func run() throws {
        TerminationSignals.block()
        let container: LogicalContainer
        let handles: [LogicalDeviceHandle]
        do {
            container = try LogicalContainer(name: "consume-\(getpid())", serving: false)
            handles = try (0..<opens).map { _ in try container.open(device) }
        } catch {
            printError("\(error)")
            throw ExitCode(1)
        }
        let counts = ConsumeCounts()
        printLine("ready: \(handles.map { String($0.consumerID.rawValue) }.joined(separator: " "))")
        for handle in handles {
            for slot in 0..<depth { try keepReading(container, handle, block: UInt64(slot), counts) }
        }
        if seconds > 0 {
            usleep(UInt32(seconds * 1_000_000))
        } else {
            TerminationSignals.wait()
        }
        counts.stop()
        for handle in handles { try? container.close(handle) }
        let (completed, failures) = counts.totals
        printLine("completed \(completed), failed \(failures.count)\(failures.first.map { ": \($0)" } ?? "")")
        if !failures.isEmpty { throw ExitCode(1) }
    }

    /// Sends a read that, when it completes, sends the next one, until stopped or failed.
    private func keepReading(_ container: LogicalContainer, _ handle: LogicalDeviceHandle, block: UInt64, _ counts: ConsumeCounts) throws {
        let chain = try ParameterChain(blocks: 4, inputCapacity: 16, outputCapacity: 512)
        @Sendable func submit() {
            guard counts.running else { return }
            do {
                chain.reset()
                let request = try chain.claimBlock()
                try BlockRequest.prepareRead(request, first: block, count: 1)
                try container.send(handle, request, context: ()) { result, _ in
                    switch result {
                    case .success: counts.complete(); submit()
                    case .failure(let error): counts.fail(error)
                    }
                }
            } catch {
                counts.fail(error)
            }
        }
        submit()
    }
}

/// What a `consume` run counted.
final class ConsumeCounts: @unchecked Sendable {
    private let lock = ConditionLock()
    private var completed = 0
    private var failures: [String] = []
    private var isRunning = true

    var running: Bool { lock.withLock { isRunning } }
    func stop() { lock.withLock { isRunning = false } }
    func complete() { lock.withLock { completed += 1 } }
    func fail(_ error: any Error) { lock.withLock { failures.append("\(error)") } }
    var totals: (Int, [String]) { lock.withLock { (completed, failures) } }
}
