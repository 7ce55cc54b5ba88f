import ModelessLogical
import ModelessSystem

/// The far side of `modeless bench logical`: an `echo` logical device in a container with the
/// standard transport and in a second one (`CONTAINER-nospin`) whose shared-memory waits do
/// not spin, and, in the same process, a raw socket that answers each message with itself
/// (the baseline).
package struct BenchPeerServing: HostedWork {
    /// The container served from (and `CONTAINER-nospin`).
    package var container: String
    /// Where the raw ping-pong listens.
    package var rawSocket: String
    /// Where serving reports.
    package var report: HostReport

    /// The peer serving `container` and `rawSocket`, reporting to `report`.
    package init(container: String, rawSocket: String, report: HostReport) {
        self.container = container
        self.rawSocket = rawSocket
        self.report = report
    }

    /// Serves until SIGINT or SIGTERM.
    package func run() throws {
        TerminationSignals.block()
        let logical = try LogicalContainer(name: container)
        defer { logical.shutdown() }
        try logical.createDevice("echo", handlers: EchoDevice.handlers)
        let withoutSpin = try LogicalContainer(name: container + "-nospin", transport: .init(sharedMemory: true, spin: .zero))
        defer { withoutSpin.shutdown() }
        try withoutSpin.createDevice("echo", handlers: EchoDevice.handlers)
        let listener = try UnixSocket.listen(at: rawSocket)
        let thread = try SystemThread(name: "raw-echo") {
            guard let connection = try? listener.accept() else { return }
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 16, alignment: 8)
            defer { buffer.deallocate() }
            while let length = try? connection.receive(into: buffer), length > 0 {
                guard (try? connection.send(UnsafeRawBufferPointer(rebasing: buffer[0..<length]))) != nil else { return }
            }
        }
        printLine("serving \(container)/echo and \(rawSocket)")
        TerminationSignals.wait()
        listener.shutdown()
        _ = thread
    }
}

/// A device whose requests copy their input to their output.
package enum EchoDevice {
    /// The handlers of an echo device.
    package static let handlers = LogicalDeviceHandlers(request: { context in try echo(context.block) })

    /// Copies `block`'s input to its output.
    @inline(never)
    package static func echo(_ block: ParameterBlock) throws {
        try block.output.copy(from: block.input, count: block.input.length)
    }
}
