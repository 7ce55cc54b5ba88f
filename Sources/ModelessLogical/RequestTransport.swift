import ModelessSystem

/// How a container's synchronous requests travel to other containers, and how its server
/// waits for requests that come to it.
///
/// Every connection starts on the container's Unix socket. With ``sharedMemory``, a consumer
/// then hands the provider a sealed shared-memory mailbox (a `SharedMessageChannel`) and
/// the open's synchronous requests, their replies and its close travel there: each side copies
/// a message in and the other copies it out, and a waiting side spins for up to ``spin``
/// before sleeping on its doorbell (an eventfd the sender rings) and the socket — but only
/// while the other side is running on another CPU (awake, on another CPU, on a machine with
/// no more runnable threads than CPUs), or is waking up because this side just rang it;
/// otherwise it sleeps at once. The socket still ends
/// when either process ends, so failure handling is the same. Asynchronous requests always
/// use a second socket with its own wait thread.
public struct RequestTransport: Sendable, Equatable {
    /// Carry synchronous requests through shared memory beside the socket.
    public var sharedMemory: Bool
    /// How long a side waiting for a message spins before sleeping (shared memory only).
    /// Spinning costs a CPU for up to that long after each message; it is what lets a round
    /// trip finish without a system call when the other side answers quickly. Waits that
    /// outlast it shrink the next spins, so an idle connection stops spinning.
    public var spin: Duration

    /// A transport with shared memory or not, spinning up to `spin`.
    public init(sharedMemory: Bool, spin: Duration) {
        self.sharedMemory = sharedMemory
        self.spin = spin
    }

    /// Shared memory, spinning up to 20 µs (while the other side runs on another CPU) before
    /// sleeping, when there is more than one CPU (on one CPU the other side cannot answer
    /// while this one spins).
    public static let standard = RequestTransport(sharedMemory: true, spin: SystemThread.cpuCount > 1 ? .microseconds(20) : .zero)

    /// Messages on the socket only, one `send` and one `recv` each way.
    public static let socket = RequestTransport(sharedMemory: false, spin: .zero)

    var spinNanoseconds: UInt64 { spin.wholeNanoseconds }
}
