import ArgumentParser
import ModelessLogical

/// How a serving process's container carries synchronous requests to and from other
/// processes (see docs/logical-devices.md, "The shared-memory channel").
package struct TransportOptions: ParsableArguments {
    enum Carrier: String, ExpressibleByArgument, CaseIterable {
        case shared, socket
    }

    @Option(help: "How synchronous requests between processes travel: shared (shared memory beside the socket) or socket.")
    var transport: Carrier = .shared

    @Option(name: .customLong("spin-microseconds"),
            help: "With shared memory, how long a waiting side spins before sleeping (0 to 100000; default 20, or 0 on one CPU).")
    var spinMicroseconds: Int?

    package func validate() throws {
        if let spinMicroseconds, !(0...100_000).contains(spinMicroseconds) {
            throw ValidationError("--spin-microseconds \(spinMicroseconds) is outside 0...100000: spinning longer than 0.1 s only burns CPU; use 0 to sleep at once")
        }
        if transport == .socket, let spinMicroseconds, spinMicroseconds > 0 {
            throw ValidationError("--spin-microseconds applies to --transport shared only; the socket transport never spins")
        }
    }

    /// The transport the options ask for.
    package var requestTransport: RequestTransport {
        switch transport {
        case .socket: .socket
        case .shared: spinMicroseconds.map { RequestTransport(sharedMemory: true, spin: .microseconds($0)) } ?? .standard
        }
    }

    /// The standard transport.
    package init() {}
}
