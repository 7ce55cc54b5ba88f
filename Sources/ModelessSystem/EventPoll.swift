import CModelessShim

#if canImport(Glibc)
import Glibc
#endif

/// An epoll instance: a set of descriptors that threads wait on together, each wait returning
/// one descriptor that became ready, named by the token it was registered with.
///
/// Several threads may wait at once; the kernel hands each ready descriptor to one of them.
/// A descriptor registered with ``Interest/oneShot`` is reported once and then disarmed until
/// ``rearm(_:token:_:)``, so the thread that received it owns it until it rearms it: that is how
/// a pool of threads serves many connections without two threads reading one.
///
/// Owns its descriptor: ``close()`` releases it, and so does `deinit`.
public final class EventPoll: @unchecked Sendable {
    /// What to wait for on a descriptor (`EPOLLIN`, `EPOLLONESHOT`, `EPOLLET`). End of stream, a hang-up
    /// and an error are always reported, as readable.
    public struct Interest: OptionSet, Sendable {
        /// The `EPOLL*` bits.
        public let rawValue: UInt32
        /// An interest from raw `EPOLL*` bits.
        public init(rawValue: UInt32) { self.rawValue = rawValue }

        /// `EPOLLIN`: a read would not block (data, a connection to accept, or the end).
        public static let readable = Interest(rawValue: EPOLLIN.rawValue)
        /// `EPOLLONESHOT`: report once, then wait for ``EventPoll/rearm(_:token:_:)``.
        public static let oneShot = Interest(rawValue: EPOLLONESHOT.rawValue)
        /// `EPOLLET`: report each time the descriptor becomes ready again (for an eventfd,
        /// each write), not for as long as it stays ready; nothing needs to be read or rearmed.
        public static let edgeTriggered = Interest(rawValue: EPOLLET.rawValue)
    }

    /// A descriptor that became ready.
    public struct Event: Sendable, Equatable {
        /// The token it was registered with.
        public var token: UInt64
        /// The raw `EPOLL*` bits the kernel reported.
        public var events: UInt32
    }

    /// The epoll instance's descriptor; valid until ``close()``.
    public let fd: Int32
    private let closeLock = ConditionLock()
    private var isOpen = true

    /// A new, empty epoll instance (`EPOLL_CLOEXEC`).
    public init() throws(SystemError) {
        fd = try systemCall("epoll_create1", "event poll") { epoll_create1(Int32(EPOLL_CLOEXEC)) }
    }

    /// Starts watching `descriptor` for `interest`; its events carry `token`.
    public func add(_ descriptor: Int32, token: UInt64, _ interest: Interest) throws(SystemError) {
        try control(EPOLL_CTL_ADD, descriptor, token: token, interest, "epoll_ctl add")
    }

    /// Arms a ``Interest/oneShot`` descriptor again (or changes what it is watched for).
    public func rearm(_ descriptor: Int32, token: UInt64, _ interest: Interest) throws(SystemError) {
        try control(EPOLL_CTL_MOD, descriptor, token: token, interest, "epoll_ctl modify")
    }

    /// Stops watching `descriptor`. One that is not watched (or already closed, which removes
    /// it by itself) is left as it is.
    public func remove(_ descriptor: Int32) {
        var event = epoll_event()
        _ = epoll_ctl(fd, EPOLL_CTL_DEL, descriptor, &event)
    }

    /// Waits for one ready descriptor, for at most `timeoutMilliseconds` (-1: without limit);
    /// nil when the time ran out.
    public func wait(timeoutMilliseconds: Int32) throws(SystemError) -> Event? {
        var event = epoll_event()
        let count = try systemCall("epoll_wait", "event poll") { epoll_wait(fd, &event, 1, timeoutMilliseconds) }
        guard count == 1 else { return nil }
        return Event(token: event.data.u64, events: event.events)
    }

    /// Closes the descriptor. Idempotent; no thread may be waiting.
    public func close() {
        closeLock.withLock {
            guard isOpen else { return }
            isOpen = false
            _ = Glibc.close(fd)
        }
    }

    deinit { close() }

    private func control(_ operation: Int32, _ descriptor: Int32, token: UInt64, _ interest: Interest, _ name: String) throws(SystemError) {
        var event = epoll_event()
        event.events = interest.rawValue
        event.data.u64 = token
        _ = try systemCall(name, "descriptor \(descriptor)") { epoll_ctl(fd, operation, descriptor, &event) }
    }
}
