import ArgumentParser
import ModelessServices

/// `modeless serve bench-peer`: the far side of `modeless bench logical` (``BenchPeerServing``).
struct ServeBenchPeer: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-peer", abstract: "The peer process of `modeless bench logical` (an echo device and a raw echo socket).",
        shouldDisplay: false)

    @Option(help: "The container to serve from.")
    var container: String

    @Option(name: .customLong("raw-socket"), help: "Where to listen for the raw ping-pong.")
    var rawSocket: String

    func run() throws {
        try hosting { try BenchPeerServing(container: container, rawSocket: rawSocket, report: .console).run() }
    }
}
