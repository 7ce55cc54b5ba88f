import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// Listens at a container's socket and serves each connection from another process on its
/// own thread: opens, closes, requests, and listings.
///
/// Only processes of the same user get in (the directory is 0700, the socket 0600, and every
/// connection's peer credentials are checked). When a connection ends for any reason,
/// including its process dying, the close handler runs for the device it had open.
final class ContainerServer: @unchecked Sendable {
    private let container: LogicalContainer
    private let listener: UnixSocket
    private let path: String
    private let lock = ConditionLock()
    private var connections: [ObjectIdentifier: ServerConnection] = [:]
    private var stopping = false
    private var acceptThread: SystemThread?

    init(container: LogicalContainer) throws(LogicalDeviceError) {
        self.container = container
        try container.directory.prepare()
        path = container.directory.socketPath(container.name)
        listener = try Self.bind(path, container: container)
        do {
            acceptThread = try SystemThread(name: "ld-accept") { [self] in acceptConnections() }
        } catch {
            listener.close()
            unlink(path)
            throw LogicalDeviceError(.system, "cannot start container \(container.name)'s accept thread: \(error)")
        }
    }

    /// Binds the socket; replaces one left by a container that ended, refuses a live one.
    private static func bind(_ path: String, container: LogicalContainer) throws(LogicalDeviceError) -> UnixSocket {
        do {
            return try UnixSocket.listen(at: path)
        } catch where error.errno == .addressInUse {
            if let probe = try? UnixSocket.connect(to: path) {
                probe.close()
                throw LogicalDeviceError(.nameInUse, "a container named '\(container.name)' is already running (\(path)): choose another name")
            }
            unlink(path)
            do { return try UnixSocket.listen(at: path) } catch {
                throw LogicalDeviceError(.system, "cannot listen at \(path): \(error)")
            }
        } catch {
            throw LogicalDeviceError(.system, "cannot listen at \(path): \(error)")
        }
    }

    /// Stops accepting, ends every connection (their consumers see the provider end), waits
    /// for the threads and removes the socket.
    func stop() {
        let open: [ServerConnection] = lock.withLock {
            stopping = true
            return Array(connections.values)
        }
        // Wake the accept thread with a connection of our own; it sees `stopping` and ends.
        (try? UnixSocket.connect(to: path))?.close()
        acceptThread?.join()
        listener.close()
        unlink(path)
        for connection in open { connection.socket.shutdown() }
        for connection in open { connection.thread?.join() }
    }

    private func acceptConnections() {
        let ownUser = getuid()
        while true {
            let socket: UnixSocket
            do { socket = try listener.accept() } catch {
                if lock.withLock({ stopping }) { return }
                usleep(10_000)  // EMFILE and the like: back off rather than spin
                continue
            }
            if lock.withLock({ stopping }) {
                socket.close()
                return
            }
            guard let peer = try? socket.peerCredentials(), peer.userID == ownUser else {
                socket.close()  // another user: the directory's permissions should already stop this
                continue
            }
            let connection = ServerConnection(container: container, socket: socket, peer: peer)
            lock.withLock { connections[ObjectIdentifier(connection)] = connection }
            do {
                connection.thread = try SystemThread(name: "ld-serve") { [self] in
                    connection.serve()
                    lock.withLock { connections[ObjectIdentifier(connection)] = nil }
                }
            } catch {
                lock.withLock { connections[ObjectIdentifier(connection)] = nil }
                socket.close()
            }
        }
    }
}
