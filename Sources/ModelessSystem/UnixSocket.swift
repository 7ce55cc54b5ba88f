import CModelessShim

#if canImport(Glibc)
import Glibc
#endif

/// A connected or listening Unix-domain `SOCK_SEQPACKET` socket: reliable, ordered, and every
/// `send` arrives as one message, so a reader never reassembles a stream.
///
/// Owns its descriptor: ``close()`` releases it, and so does `deinit`. ``shutdown()`` wakes a
/// thread blocked in ``receive(into:)`` (it returns 0, as at end of stream) without closing the
/// descriptor under it.
public final class UnixSocket: @unchecked Sendable {
    /// Who is at the other end of a connection, as the kernel recorded at `connect`.
    public struct PeerCredentials: Sendable, Equatable {
        /// The peer's process id when it connected.
        public var processID: Int32
        /// The peer's effective user id when it connected.
        public var userID: UInt32
    }

    /// The socket's descriptor; valid until ``close()``.
    public let fd: Int32
    /// The path this socket was bound or connected to, for messages.
    public let path: String
    private let closeLock = ConditionLock()
    private var isOpen = true

    private init(fd: Int32, path: String) {
        self.fd = fd
        self.path = path
    }

    /// Binds a listening socket at `path`, readable and writable by this user only (mode 0600).
    /// Fails with `EADDRINUSE` if a file exists there.
    public static func listen(at path: String, backlog: Int32 = 64) throws(SystemError) -> UnixSocket {
        let socket = try makeSocket(path)
        try withAddress(path) { (address, length) throws(SystemError) in
            _ = try systemCall("bind", path) { Glibc.bind(socket.fd, address, length) }
        }
        _ = try systemCall("chmod", path) { Glibc.chmod(path, 0o600) }
        _ = try systemCall("listen", path) { Glibc.listen(socket.fd, backlog) }
        return socket
    }

    /// Connects to the listening socket at `path`.
    public static func connect(to path: String) throws(SystemError) -> UnixSocket {
        let socket = try makeSocket(path)
        try withAddress(path) { (address, length) throws(SystemError) in
            _ = try systemCall("connect", path) { Glibc.connect(socket.fd, address, length) }
        }
        return socket
    }

    /// A connected pair, for tests and for threads in one process.
    public static func pair() throws(SystemError) -> (UnixSocket, UnixSocket) {
        var fds: [Int32] = [0, 0]
        _ = try systemCall("socketpair", "AF_UNIX") {
            socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds)
        }
        return (UnixSocket(fd: fds[0], path: "socketpair"), UnixSocket(fd: fds[1], path: "socketpair"))
    }

    /// Waits for and returns the next connection (close-on-exec from the start, so that a
    /// child another thread spawns meanwhile never inherits it).
    public func accept() throws(SystemError) -> UnixSocket {
        let connection = try systemCall("accept4", path) { modeless_accept_cloexec(fd) }
        return UnixSocket(fd: connection, path: path)
    }

    /// Sends `bytes` as one message. A peer that has gone away gives `EPIPE` (never `SIGPIPE`).
    public func send(_ bytes: UnsafeRawBufferPointer) throws(SystemError) {
        let sent = try systemCall("send", path) { Glibc.send(fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL)) }
        if sent != bytes.count { throw SystemError("send", path, errno: .messageTooLong) }
    }

    /// Receives one message into `buffer` and returns its length: 0 at end of stream (the peer
    /// closed or died, or ``shutdown()`` was called). A message longer than `buffer` is
    /// discarded and reported as `EMSGSIZE`.
    public func receive(into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> Int {
        let length = try systemCall("recv", path) { recv(fd, buffer.baseAddress, buffer.count, Int32(MSG_TRUNC)) }
        if length > buffer.count { throw SystemError("recv", path, errno: .messageTooLong) }
        return length
    }

    /// Receives one message like ``receive(into:)`` if one is waiting, without blocking
    /// (`MSG_DONTWAIT`): nil if none is, 0 at end of stream.
    public func receiveIfReady(into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> Int? {
        let length: Int
        do {
            length = try systemCall("recv", path) { recv(fd, buffer.baseAddress, buffer.count, Int32(MSG_TRUNC) | Int32(MSG_DONTWAIT)) }
        } catch where error.errno == .resourceTemporarilyUnavailable {
            return nil
        }
        if length > buffer.count { throw SystemError("recv", path, errno: .messageTooLong) }
        return length
    }

    /// Whether a receive would return at once: a message is waiting, or the connection has
    /// ended (`poll` without waiting).
    public var hasInput: Bool {
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&entry, 1, 0) > 0
    }

    /// Sends `bytes` as one message with a copy of descriptor `attached` (`SCM_RIGHTS`); the
    /// caller keeps its own descriptor and closes it when done.
    public func send(_ bytes: UnsafeRawBufferPointer, attaching attached: Int32) throws(SystemError) {
        let sent = try systemCall("sendmsg", path) { modeless_send_with_fd(fd, bytes.baseAddress, UInt(bytes.count), attached) }
        if sent != bytes.count { throw SystemError("sendmsg", path, errno: .messageTooLong) }
    }

    /// Receives one message like ``receive(into:)``, and the descriptor sent with it, if any,
    /// which the caller then owns (close-on-exec; at most one is kept, others are closed).
    public func receive(into buffer: UnsafeMutableRawBufferPointer, descriptor: inout Int32?) throws(SystemError) -> Int {
        var received: Int32 = -1
        let length = try systemCall("recvmsg", path) { modeless_receive_with_fd(fd, buffer.baseAddress, UInt(buffer.count), &received) }
        descriptor = received >= 0 ? received : nil
        if length > buffer.count {
            if received >= 0 { Glibc.close(received) }
            descriptor = nil
            throw SystemError("recvmsg", path, errno: .messageTooLong)
        }
        return length
    }

    /// Sends `bytes` as one message with copies of `descriptors` (1 to
    /// ``maximumAttached``; `SCM_RIGHTS`); the caller keeps its own and closes them when done.
    public func send(_ bytes: UnsafeRawBufferPointer, attaching descriptors: [Int32]) throws(SystemError) {
        guard (1...Self.maximumAttached).contains(descriptors.count) else { throw SystemError("sendmsg", path, errno: .invalidArgument) }
        let sent = try descriptors.withUnsafeBufferPointer { (list) throws(SystemError) in
            try systemCall("sendmsg", path) { modeless_send_with_fds(fd, bytes.baseAddress, UInt(bytes.count), list.baseAddress, Int32(list.count)) }
        }
        if sent != bytes.count { throw SystemError("sendmsg", path, errno: .messageTooLong) }
    }

    /// The most descriptors one message carries.
    public static let maximumAttached = Int(MODELESS_MAXIMUM_ATTACHED)

    /// Receives one message like ``receive(into:)``, and the descriptors sent with it (up to
    /// ``maximumAttached``; any more are closed) into `descriptors`, which the caller then
    /// owns (close-on-exec). `descriptors` is emptied first; nothing is allocated when none came.
    public func receive(into buffer: UnsafeMutableRawBufferPointer, descriptors: inout [Int32]) throws(SystemError) -> Int {
        descriptors.removeAll(keepingCapacity: true)
        var received: (Int32, Int32, Int32, Int32) = (-1, -1, -1, -1)
        var count: Int32 = 0
        let length = try withUnsafeMutableBytes(of: &received) { (slots) throws(SystemError) in
            try systemCall("recvmsg", path) {
                modeless_receive_with_fds(fd, buffer.baseAddress, UInt(buffer.count), slots.baseAddress!.assumingMemoryBound(to: Int32.self), Int32(Self.maximumAttached), &count)
            }
        }
        if count > 0 {
            withUnsafeBytes(of: received) { slots in
                for index in 0..<Int(count) { descriptors.append(slots.load(fromByteOffset: index * 4, as: Int32.self)) }
            }
        }
        if length > buffer.count {
            for descriptor in descriptors { Glibc.close(descriptor) }
            descriptors.removeAll(keepingCapacity: true)
            throw SystemError("recvmsg", path, errno: .messageTooLong)
        }
        return length
    }

    /// The process and user at the other end.
    public func peerCredentials() throws(SystemError) -> PeerCredentials {
        var processID: Int32 = 0
        var userID: UInt32 = 0
        _ = try systemCall("getsockopt SO_PEERCRED", path) { modeless_peer_credentials(fd, &processID, &userID) }
        return PeerCredentials(processID: processID, userID: userID)
    }

    /// Ends the connection in both directions; a blocked ``receive(into:)`` returns 0.
    public func shutdown() {
        closeLock.withLock { if isOpen { _ = Glibc.shutdown(fd, Int32(SHUT_RDWR)) } }
    }

    /// Closes the descriptor. Idempotent.
    public func close() {
        closeLock.withLock {
            guard isOpen else { return }
            isOpen = false
            _ = Glibc.close(fd)
        }
    }

    deinit { close() }

    private static func makeSocket(_ path: String) throws(SystemError) -> UnixSocket {
        let fd = try systemCall("socket", path) {
            socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        }
        return UnixSocket(fd: fd, path: path)
    }

    private static func withAddress(
        _ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) throws(SystemError) -> Void
    ) throws(SystemError) {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard bytes.count < capacity else { throw SystemError("bind", path, errno: .fileNameTooLong) }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + 1)
        var failure: SystemError?
        withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { generic in
                do throws(SystemError) { try body(generic, length) } catch { failure = error }
            }
        }
        if let failure { throw failure }
    }
}
