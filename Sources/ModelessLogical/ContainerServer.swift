import Logging
import ModelessSystem
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Listens at a container's socket and serves the connections from other processes with a
/// small pool of threads that wait together on one `epoll`: opens, closes, requests, listings.
///
/// Every connection is registered one-shot, so the thread that the kernel hands it to owns it:
/// that thread answers every message that has arrived (spinning briefly for the next one on a
/// shared channel, as a blocked reader would), then rearms it and waits again. A connection
/// between messages costs its socket, its shared channel's mapping and a small record, and no
/// thread; a connection that ends is taken out of the poll and released at once, with the close
/// handler run for the device it had open.
///
/// The pool keeps one thread waiting whenever it can: the thread that takes the last waiting
/// place starts another, up to ``maximumThreads``, so a handler that blocks (on a slow device
/// or on a request to another container) holds up only its own connection. Threads left
/// waiting with nothing to do for ``idleMilliseconds`` end, down to one.
///
/// Only processes of the same user get in (the directory is 0700, the socket 0600, and every
/// connection's peer credentials are checked).
///
/// Logs to the logger it is given: connections accepted and ended at `debug`; a connection
/// refused, an accept or poll failure, or no thread to start for more connections at `info`
/// (each is otherwise silent: the consumer sees its connection end, or waits for a thread).
final class ContainerServer: @unchecked Sendable {
    /// The most threads serving one container's connections at once; beyond that, connections
    /// with messages wait for a thread to come free.
    static let maximumThreads = 256
    /// How long a spare thread waits for work before it ends.
    static let idleMilliseconds: Int32 = 1000

    /// Tokens of the poll's descriptors that are not connections.
    private enum Token {
        static let stop: UInt64 = 0
        static let listener: UInt64 = 1
        static let firstConnection: UInt64 = 2
        /// Set in the token of a connection's shared-channel doorbell (its socket's has none).
        static let doorbell: UInt64 = 1 << 62
    }

    /// What a thread does after a wait.
    private enum Next {
        case serve(EventPoll.Event)
        case waitAgain
        case end(joining: SystemThread?)
    }

    private let container: LogicalContainer
    private let logger: Logger
    private let listener: UnixSocket
    private let path: String
    private let events: EventPoll
    /// Signalled once, by ``stop()``; left readable, so that every waiting thread wakes.
    private let stopSignal: EventNotifier
    private let lock = ConditionLock()
    private var connections: [UInt64: ServerConnection] = [:]
    private var nextToken = Token.firstConnection
    private var stopping = false
    private var threads: [Int: SystemThread] = [:]
    private var nextThread = 0
    private var waitingThreads = 0
    /// The thread that ended last, joined by the next to end (or by ``stop()``).
    private var ended: SystemThread?
    /// Microseconds a thread waits after letting go of a connection, both before it reads what
    /// was taken meanwhile and before it rearms: 0 but in tests, which widen with it the
    /// windows that ``end(_:)`` guards.
    let letGoDelayMicroseconds = Atomic<UInt32>(0)

    init(container: LogicalContainer, logger: Logger) throws(LogicalDeviceError) {
        self.container = container
        self.logger = logger
        try container.directory.prepare()
        Self.raiseDescriptorLimit()
        path = container.directory.socketPath(container.name)
        listener = try Self.bind(path, container: container)
        do {
            events = try EventPoll()
            stopSignal = try EventNotifier()
        } catch {
            listener.close()
            unlink(path)
            throw LogicalDeviceError(.system, "cannot start container \(container.name)'s server: \(error)")
        }
        do {
            try events.add(stopSignal.fd, token: Token.stop, .readable)
            try events.add(listener.fd, token: Token.listener, [.readable, .oneShot])
            try lock.withLock { () throws(SystemError) in try startThread() }
        } catch {
            events.close()
            stopSignal.close()
            listener.close()
            unlink(path)
            throw LogicalDeviceError(.system, "cannot start container \(container.name)'s server: \(error)")
        }
        logger.debug("serving", metadata: ["socket": "\(path)"])
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

    /// Every connection holds a descriptor: a serving process may open as many as its hard
    /// limit allows (the soft limit is often 1024). Done once per process.
    private static let raiseDescriptorLimitOnce: Void = {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
        limit.rlim_cur = limit.rlim_max
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)  // refused: the soft limit stays, and serving goes on
    }()

    private static func raiseDescriptorLimit() { _ = raiseDescriptorLimitOnce }

    /// Stops accepting, ends every connection (their consumers see the provider end, and the
    /// close handler runs for each open), waits for every thread and removes the socket.
    func stop() {
        let running: [SystemThread]? = lock.withLock {
            guard !stopping else { return nil }
            stopping = true
            // Wakes threads blocked on a consumer; each then leaves its connection to us.
            for connection in connections.values { connection.socket.shutdown() }
            var running = Array(threads.values)
            if let ended { running.append(ended) }
            threads.removeAll()
            ended = nil
            return running
        }
        guard let running else { return }
        do { try stopSignal.signal() } catch {
            preconditionFailure("cannot signal the container server's threads to stop: \(error)")
        }
        for thread in running { thread.join() }
        listener.close()
        unlink(path)
        let remaining: [ServerConnection] = lock.withLock {
            defer { connections.removeAll() }
            return Array(connections.values)
        }
        for connection in remaining { connection.finish() }
        events.close()
        stopSignal.close()
        logger.debug("stopped", metadata: ["connections": "\(remaining.count)"])
    }

    /// The connections being served now.
    var connectionCount: Int { lock.withLock { connections.count } }

    /// Starts a thread that waits in the poll. The lock is held.
    private func startThread() throws(SystemError) {
        let number = nextThread
        threads[number] = try SystemThread(name: "ld-serve") { [self] in serve(thread: number) }
        nextThread += 1
        waitingThreads += 1
    }

    /// One thread of the pool: waits for a ready descriptor, serves it, and again.
    private func serve(thread number: Int) {
        let scratch = ServingScratch()
        while true {
            var event: EventPoll.Event?
            do { event = try events.wait(timeoutMilliseconds: Self.idleMilliseconds) } catch {
                usleep(10_000)  // not expected (the poll outlives its threads): back off rather than spin
                event = nil
            }
            switch next(after: event, thread: number) {
            case .waitAgain:
                continue
            case .end(let previous):
                previous?.join()
                return
            case .serve(let event):
                if event.token == Token.listener {
                    acceptConnection(scratch: scratch)
                } else {
                    serveConnection(event.token, scratch: scratch)
                }
                lock.withLock { waitingThreads += 1 }
            }
        }
    }

    /// Decides, under the lock, what a thread does after a wait that returned `event`.
    private func next(after event: EventPoll.Event?, thread number: Int) -> Next {
        lock.withLock {
            if stopping { return .end(joining: nil) }  // stop() joins every thread
            guard let event, event.token != Token.stop else {
                guard waitingThreads > 1 else { return .waitAgain }
                // A spare with nothing to do ends; the last one to end joins this one.
                waitingThreads -= 1
                let previous = ended
                ended = threads.removeValue(forKey: number)
                return .end(joining: previous)
            }
            waitingThreads -= 1
            if waitingThreads == 0 && threads.count < Self.maximumThreads {
                // Keep one thread waiting. If none can be started, the threads there are serve
                // the rest as they come free.
                do { try startThread() } catch {
                    logger.info("cannot start another serving thread; connections wait for the \(threads.count) there are",
                                metadata: ["error": "\(error)"])
                }
            }
            return .serve(event)
        }
    }

    /// Accepts one connection, answers what it has sent already (its first message is usually
    /// on its way with the connection), and adds it to the poll. The listener is rearmed first,
    /// so that other threads accept the next connections meanwhile.
    private func acceptConnection(scratch: ServingScratch) {
        let accepted: Result<UnixSocket, SystemError>
        do { accepted = .success(try listener.accept()) } catch { accepted = .failure(error) }
        rearmListener()
        let socket: UnixSocket
        switch accepted {
        case .success(let accepted): socket = accepted
        case .failure(let error):
            logger.info("cannot accept a connection; retrying in 10 ms", metadata: ["error": "\(error)"])
            usleep(10_000)  // EMFILE and the like: back off rather than spin
            return
        }
        let credentials: UnixSocket.PeerCredentials
        do { credentials = try socket.peerCredentials() } catch {
            logger.info("refused a connection whose peer cannot be read", metadata: ["error": "\(error)"])
            socket.close()
            return
        }
        guard credentials.userID == getuid() else {
            // Another user: the directory's permissions should already stop this.
            logger.info("refused a connection from another user",
                        metadata: ["pid": "\(credentials.processID)", "uid": "\(credentials.userID)"])
            socket.close()
            return
        }
        let peer = credentials
        let connection: ServerConnection? = lock.withLock {
            guard !stopping else { return nil }
            let connection = ServerConnection(container: container, socket: socket, peer: peer, token: nextToken)
            nextToken += 1
            connections[connection.token] = connection
            return connection
        }
        guard let connection else {
            socket.close()
            return
        }
        logger.debug("connection accepted", metadata: ["pid": "\(peer.processID)", "connection": "\(connection.token)"])
        connection.busy.store(true, ordering: .sequentiallyConsistent)
        do { try events.add(socket.fd, token: connection.token, [.readable, .oneShot]) } catch {
            // No room in the poll (ENOMEM, ENOSPC): the consumer sees the provider end.
            logger.info("ending a connection that cannot be polled", metadata: ["connection": "\(connection.token)", "error": "\(error)"])
            end(connection)
            return
        }
        // Whatever fires meanwhile is recorded, and handled once this thread lets go.
        serveHeld(connection, woken: .none, scratch: scratch)
    }

    /// Arms the listening socket again; waits for memory the kernel lacks rather than stop accepting.
    private func rearmListener() {
        while true {
            do {
                try events.rearm(listener.fd, token: Token.listener, [.readable, .oneShot])
                return
            } catch where error.errno == .noMemory {
                usleep(10_000)
            } catch {
                preconditionFailure("cannot rearm container \(container.name)'s listening socket: \(error)")
            }
        }
    }

    /// Answers what has arrived on the connection whose socket or doorbell has `token`, then
    /// rearms what fired, or ends it.
    ///
    /// A connection's socket (one-shot) and its channel's doorbell (edge-triggered: each ring
    /// is one event, with nothing to read or rearm) are polled apart, so two threads may be
    /// woken for it at once: the one that takes ``ServerConnection/busy`` serves it; the other
    /// only records what it took, which the server handles after it lets go (it reads the
    /// record after releasing, so a record made while it held the connection is never missed).
    private func serveConnection(_ token: UInt64, scratch: ServingScratch) {
        let wake: ServerConnection.Wake = token & Token.doorbell != 0 ? .doorbell : .socket
        guard let connection = lock.withLock({ connections[token & ~Token.doorbell] }) else { return }
        connection.takenWhileBusy.bitwiseOr(wake == .doorbell ? ServerConnection.TakenEvent.doorbell : ServerConnection.TakenEvent.socket, ordering: .sequentiallyConsistent)
        guard connection.busy.compareExchange(expected: false, desired: true, ordering: .sequentiallyConsistent).exchanged else { return }
        serveHeld(connection, woken: wake, scratch: scratch)
    }

    /// Serves a connection this thread holds (``ServerConnection/busy``) until nothing is left
    /// for it, then lets go of it, or ends it.
    private func serveHeld(_ connection: ServerConnection, woken: ServerConnection.Wake, scratch: ServingScratch) {
        var wake = woken
        while true {
            // Rings recorded so far are for messages published before now, which this pass
            // sees: forget them, so that the pass is not repeated for them.
            connection.takenWhileBusy.bitwiseAnd(~ServerConnection.TakenEvent.doorbell, ordering: .sequentiallyConsistent)
            guard connection.serveArrived(with: scratch, woken: wake) == .idle else {
                end(connection)
                return
            }
            let fired: UInt8
            var holding = true
            // Counted before letting go, so that a thread that takes the connection next and
            // ends it waits for this rearm (see ``end(_:)``).
            connection.rearming.add(1, ordering: .sequentiallyConsistent)
            do {
                try pollDoorbell(of: connection)
                connection.busy.store(false, ordering: .sequentiallyConsistent)
                holding = false
                let delay = letGoDelayMicroseconds.load(ordering: .relaxed)
                if delay > 0 { usleep(delay) }
                fired = connection.takenWhileBusy.exchange(0, ordering: .sequentiallyConsistent)
                if fired & ServerConnection.TakenEvent.socket != 0 {
                    if delay > 0 { usleep(delay) }
                    try events.rearm(connection.socket.fd, token: connection.token, [.readable, .oneShot])
                }
                connection.rearming.subtract(1, ordering: .sequentiallyConsistent)
            } catch {
                connection.rearming.subtract(1, ordering: .sequentiallyConsistent)
                logger.info("ending a connection that cannot be polled", metadata: ["connection": "\(connection.token)", "error": "\(error)"])
                // Ended only by a thread that holds it: one woken since this one let go may
                // be serving it (briefly: it lets go once nothing is left for it, or ends it
                // itself, keeping hold).
                while !holding {
                    holding = connection.busy.compareExchange(expected: false, desired: true, ordering: .sequentiallyConsistent).exchanged
                    if !holding {
                        guard lock.withLock({ connections[connection.token] != nil }) else { return }
                        sched_yield()
                    }
                }
                end(connection)
                return
            }
            // A ring another thread took while this one held the connection: serve it, unless
            // a thread woken since has taken the connection.
            guard fired & ServerConnection.TakenEvent.doorbell != 0,
                  connection.busy.compareExchange(expected: false, desired: true, ordering: .sequentiallyConsistent).exchanged else { return }
            wake = .doorbell
        }
    }

    /// Adds the connection's shared-channel doorbell to the poll once the consumer shared a
    /// channel. Called by the thread serving it.
    private func pollDoorbell(of connection: ServerConnection) throws(SystemError) {
        guard !connection.doorbellPolled, let doorbell = connection.doorbellDescriptor else { return }
        try events.add(doorbell, token: connection.token | Token.doorbell, [.readable, .edgeTriggered])
        connection.doorbellPolled = true
    }

    /// Takes a connection out of the table and the poll and releases it, unless ``stop()``
    /// has taken it already. Called by the thread that holds it.
    ///
    /// A thread that let go of the connection just before this one took it may not have
    /// rearmed its socket yet; the descriptor is closed only once it has. Otherwise its
    /// rearm could land on the next connection given the same descriptor number, with this
    /// connection's token, and that connection's events would then be dropped as a dead
    /// connection's (a consumer waiting for an answer for good, or a provider never seeing
    /// a consumer's end).
    private func end(_ connection: ServerConnection) {
        guard lock.withLock({ connections.removeValue(forKey: connection.token) }) != nil else { return }
        while connection.rearming.load(ordering: .sequentiallyConsistent) != 0 { sched_yield() }
        events.remove(connection.socket.fd)
        if connection.doorbellPolled, let doorbell = connection.doorbellDescriptor { events.remove(doorbell) }
        connection.finish()
        logger.debug("connection ended", metadata: ["connection": "\(connection.token)"])
    }
}
