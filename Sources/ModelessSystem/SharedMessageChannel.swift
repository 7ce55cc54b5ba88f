import CModelessShim

#if canImport(Glibc)
import Glibc
#endif

/// A two-way message channel between two processes through shared memory, beside the Unix
/// socket that connects them: each message is copied into a mailbox in a sealed `memfd`
/// mapping both processes share, and the receiver finds it by a sequence number.
///
/// A receiver spins watching the sequence number (no system call at all when the answer comes
/// soon) only while the peer is running on another CPU: each side publishes in the shared
/// memory whether it is awake or asleep in this channel and the CPU it last waited on, and
/// the receiver spins only when the peer is awake, on another CPU, and the machine has no more
/// runnable threads than CPUs (``CPUContention``: beyond that a runnable peer may be waiting
/// for a CPU, and a spinning waiter only takes CPU time from it). Otherwise it sleeps at once.
/// A spin lasts at most ``spinNanoseconds`` and adapts, as an adaptive mutex's does: each
/// message sent later than that after the wait began halves the next spin, down to none, and
/// one sent within it restores the full spin (the sender stamps each message with the time it
/// was sent, so the receiver knows whether a spin would have caught it even when it slept),
/// so a connection that sits idle between messages stops costing CPU. To sleep, the receiver
/// raises a "sleeping" flag and blocks in `recv` on the socket, and the sender, seeing the
/// flag, rings a one-byte doorbell message there. Each side stores its own word then reads the
/// other's, with sequentially consistent ordering, so a doorbell is never lost and never rung
/// twice. Blocking on the socket keeps the socket's guarantee: when either process ends, the
/// other's receive returns 0 at once.
///
/// Neither side trusts the other with the shared memory: the creator seals the file's size
/// (a peer cannot shrink it under the other's mapping), the joiner checks the seals and the
/// size before mapping, a received length is checked against the capacity, and messages are
/// copied out before anything reads them, so a peer rewriting the mailbox meanwhile changes
/// nothing already received.
///
/// Each end is used by one sending thread and one receiving thread at a time (a request's
/// caller, or the provider's thread serving the connection, does both in turn). A receiver
/// either blocks in ``receive(into:)`` or, to wait for many channels with one `epoll`, takes
/// messages with ``receiveIfArrived(into:spinning:)``.
public final class SharedMessageChannel: MessageLink, @unchecked Sendable {
    /// The largest message either side can send.
    public let capacity: Int
    /// How long a receiver spins before sleeping on the socket; 0 sleeps at once.
    public let spinNanoseconds: UInt64
    private let socket: UnixSocket
    private let base: UnsafeMutableRawPointer
    private let size: Int
    private let outbox: UnsafeMutableRawPointer
    private let inbox: UnsafeMutableRawPointer
    private var sentSequence: UInt32 = 0
    private var seenSequence: UInt32 = 0
    /// How long the next wait spins: ``spinNanoseconds``, less after waits that outlasted it.
    private var currentSpin: UInt64

    /// How long this side's next wait will spin before sleeping (for diagnostics and tests;
    /// read it on the receiving thread).
    public var nextSpinNanoseconds: UInt64 { currentSpin }

    /// Whether the peer is awake, as it published: false while it sleeps in this channel's
    /// wait, waiting for a message from this side (for diagnostics and tests).
    public var peerIsAwake: Bool { modeless_load_seqcst32(outbox + Self.presenceOffset) == Presence.awake }
    private var doorbell: UInt8 = 0x44  // "D"

    // Layout: a 4 KiB header page, then two mailboxes (the creator sends in the first).
    // In a mailbox: the sequence number at 0, the message length at 4 and the time it was sent
    // at 8 (one cache line, all written by the sender, so the receiver that sees the sequence
    // move fetches one line for all three); the receiver's sleeping flag at 64 (its own line);
    // the receiver's presence (awake or asleep) at 192 and the CPU it last waited on at 196;
    // the message at 256.
    private static let magic: UInt64 = 0x3330_4E41_4843_4C4D  // "MLCHAN03"
    private static let sequenceOffset = 0
    private static let lengthOffset = 4
    private static let sentAtOffset = 8
    private static let sleepingOffset = 64
    private static let presenceOffset = 192
    private static let cpuOffset = 196
    private static let messageOffset = 256

    /// A side's presence word: awake (running, or about to) or asleep in this channel's wait.
    private enum Presence {
        static let awake: UInt32 = 0
        static let asleep: UInt32 = 1
    }

    private static func mailboxSize(_ capacity: Int) -> Int { (messageOffset + capacity + 4095) & ~4095 }
    private static func fileSize(_ capacity: Int) -> Int { 4096 + 2 * mailboxSize(capacity) }

    /// Makes the shared memory for a channel over `socket` whose messages are at most
    /// `capacity` bytes. Returns the channel and the descriptor to send the peer (with
    /// ``UnixSocket/send(_:attaching:)``), which the caller closes after sending.
    public static func create(capacity: Int, socket: UnixSocket, spinNanoseconds: UInt64) throws(SystemError) -> (SharedMessageChannel, descriptor: Int32) {
        precondition(capacity > 0 && capacity <= Int(UInt32.max) - messageOffset, "a channel's capacity must fit a mailbox")
        let size = fileSize(capacity)
        let fd = try systemCall("memfd_create", "message channel") { modeless_memfd("modeless-channel") }
        do {
            _ = try systemCall("ftruncate", "message channel") { ftruncate(fd, off_t(size)) }
            _ = try systemCall("seal", "message channel") { modeless_seal_size(fd) }
            let base = try map(fd, size: size)
            base.storeBytes(of: magic.littleEndian, as: UInt64.self)
            base.storeBytes(of: UInt32(capacity).littleEndian, toByteOffset: 8, as: UInt32.self)
            let channel = SharedMessageChannel(base: base, size: size, capacity: capacity, creator: true, socket: socket, spinNanoseconds: spinNanoseconds)
            return (channel, fd)
        } catch {
            Glibc.close(fd)
            throw error
        }
    }

    /// Maps the shared memory a peer made with ``create(capacity:socket:spinNanoseconds:)``
    /// and sent as `descriptor` (which stays the caller's to close). Refuses, with `EINVAL`,
    /// memory whose size is not sealed or not that of a channel of `capacity`, or that does
    /// not start with the channel's header.
    public convenience init(joining descriptor: Int32, capacity: Int, socket: UnixSocket, spinNanoseconds: UInt64) throws(SystemError) {
        let size = Self.fileSize(capacity)
        var status = stat()
        _ = try systemCall("fstat", "shared message channel") { fstat(descriptor, &status) }
        guard (status.st_mode & S_IFMT) == S_IFREG, Int(status.st_size) == size, modeless_size_is_sealed(descriptor) == 1 else {
            throw SystemError("join (the memory is not a size-sealed \(size)-byte channel)", "shared message channel", errno: .invalidArgument)
        }
        let base = try Self.map(descriptor, size: size)
        guard UInt64(littleEndian: base.load(as: UInt64.self)) == Self.magic,
              UInt32(littleEndian: base.load(fromByteOffset: 8, as: UInt32.self)) == UInt32(capacity) else {
            munmap(base, size)
            throw SystemError("join (the memory has no channel header of capacity \(capacity))", "shared message channel", errno: .invalidArgument)
        }
        self.init(base: base, size: size, capacity: capacity, creator: false, socket: socket, spinNanoseconds: spinNanoseconds)
    }

    private init(base: UnsafeMutableRawPointer, size: Int, capacity: Int, creator: Bool, socket: UnixSocket, spinNanoseconds: UInt64) {
        self.base = base
        self.size = size
        self.capacity = capacity
        self.socket = socket
        self.spinNanoseconds = spinNanoseconds
        currentSpin = spinNanoseconds
        let first = base + 4096
        let second = first + Self.mailboxSize(capacity)
        outbox = creator ? first : second
        inbox = creator ? second : first
        // Start from what the mailboxes hold now, so a channel joined later does not see old messages.
        sentSequence = modeless_load_seqcst32(outbox + Self.sequenceOffset)
        seenSequence = modeless_load_seqcst32(inbox + Self.sequenceOffset)
    }

    private static func map(_ fd: Int32, size: Int) throws(SystemError) -> UnsafeMutableRawPointer {
        guard let address = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), address != MAP_FAILED else {
            throw SystemError("mmap", "shared message channel", errno: .current)
        }
        return address
    }

    deinit { munmap(base, size) }

    /// Puts `bytes` in the peer's mailbox and rings the doorbell if the peer sleeps. The peer
    /// must have taken the previous message: the channel carries one message at a time each
    /// way, as requests and their replies do. Fails with `EMSGSIZE` beyond the capacity, and
    /// with `EPIPE` when ringing a peer that has ended.
    public func send(_ bytes: UnsafeRawBufferPointer) throws(SystemError) {
        guard bytes.count <= capacity else { throw SystemError("send", "shared message channel", errno: .messageTooLong) }
        if let source = bytes.baseAddress { (outbox + Self.messageOffset).copyMemory(from: source, byteCount: bytes.count) }
        (outbox + Self.lengthOffset).storeBytes(of: UInt32(bytes.count), as: UInt32.self)
        (outbox + Self.sentAtOffset).storeBytes(of: monotonicNanoseconds(), as: UInt64.self)
        sentSequence &+= 1
        modeless_store_seqcst32(outbox + Self.sequenceOffset, sentSequence)
        // Read the flag before taking it down: while the receiver spins, the flag's line stays
        // shared in both caches and the read costs nothing; an exchange would pull the line
        // over on every message. The sequence store before the read is sequentially
        // consistent, as the receiver's flag store before its sequence read is, so one of the
        // two sees the other's store: a receiver going to sleep is never missed.
        if modeless_load_seqcst32(outbox + Self.sleepingOffset) == 1,
           modeless_exchange_seqcst32(outbox + Self.sleepingOffset, 0) == 1 {
            try withUnsafeBytes(of: &doorbell) { (byte) throws(SystemError) in try socket.send(byte) }
        }
    }

    /// Waits for the next message and copies it into `buffer`; returns its length, or 0 when
    /// the peer has ended (or the socket was shut down). A length beyond the capacity or the
    /// buffer is `EMSGSIZE`; anything but a doorbell on the socket is `EBADMSG`.
    public func receive(into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> Int {
        let sequence = inbox + Self.sequenceOffset
        let sleeping = inbox + Self.sleepingOffset
        if !arrived(sequence) {
            let started = spinNanoseconds > 0 ? monotonicNanoseconds() : 0
            if spinWhileEmpty(sequence, started: started) {
                currentSpin = spinNanoseconds
            } else {
                setPresence(Presence.asleep)
                defer { setPresence(Presence.awake) }
                try sleepUntilArrived(sequence, sleeping)
                if !peerEnded { adaptSpin(waitStarted: started) }
            }
            if peerEnded { return 0 }
        }
        seenSequence = modeless_load_seqcst32(sequence)
        let length = Int((inbox + Self.lengthOffset).load(as: UInt32.self))
        guard length <= capacity, length <= buffer.count else { throw SystemError("receive", "shared message channel", errno: .messageTooLong) }
        if let destination = buffer.baseAddress { destination.copyMemory(from: inbox + Self.messageOffset, byteCount: length) }
        return length
    }

    // MARK: Waiting in an event loop

    /// When the wait this side is sleeping through began (0: not sleeping), for the spin's
    /// adaptation in ``receiveIfArrived(into:spinning:)``.
    private var sleepStarted: UInt64 = 0
    /// Whether ``receiveIfArrived(into:spinning:)`` left this side's sleeping flag up.
    private var flagRaised = false

    /// Takes the next message without blocking, for a receiver that waits for many channels
    /// at once (on their sockets, with an ``EventPoll``) instead of in ``receive(into:)``.
    /// Copies the message into `buffer` and returns its length; if none has arrived, and none
    /// arrives while it spins (only with `spinning`), raises this side's sleeping flag and
    /// returns nil. After nil the caller waits until the socket is readable, calls
    /// ``takeDoorbell()``, then calls this again: a sender that finds the flag up rings the
    /// doorbell, so no message goes unnoticed. A doorbell can come with no message behind it
    /// (the flag was lowered as the sender took it down); this then returns nil again.
    /// Errors are those of ``receive(into:)``. Use one way of receiving per end.
    public func receiveIfArrived(into buffer: UnsafeMutableRawBufferPointer, spinning: Bool) throws(SystemError) -> Int? {
        let sequence = inbox + Self.sequenceOffset
        let sleeping = inbox + Self.sleepingOffset
        if !arrived(sequence) {
            let started = sleepStarted != 0 ? sleepStarted : spinNanoseconds > 0 ? monotonicNanoseconds() : 1
            if spinning && spinWhileEmpty(sequence, started: started) {
                currentSpin = spinNanoseconds
            } else {
                modeless_store_seqcst32(sleeping, 1)
                flagRaised = true
                if !arrived(sequence) {
                    sleepStarted = started
                    setPresence(Presence.asleep)
                    return nil
                }
            }
        }
        setPresence(Presence.awake)
        if flagRaised {
            // If the sender took the flag down first, its doorbell comes anyway: a wake-up to spare.
            _ = modeless_exchange_seqcst32(sleeping, 0)
            flagRaised = false
        }
        if sleepStarted != 0 {
            adaptSpin(waitStarted: sleepStarted)
            sleepStarted = 0
        }
        seenSequence = modeless_load_seqcst32(sequence)
        let length = Int((inbox + Self.lengthOffset).load(as: UInt32.self))
        guard length <= capacity, length <= buffer.count else { throw SystemError("receive", "shared message channel", errno: .messageTooLong) }
        if let destination = buffer.baseAddress { destination.copyMemory(from: inbox + Self.messageOffset, byteCount: length) }
        return length
    }

    /// Takes a doorbell waiting on the socket, without blocking, for a receiver that
    /// ``receiveIfArrived(into:spinning:)`` left asleep and whose socket became readable.
    /// False when the socket has reached its end (the peer ended, or the socket was shut down);
    /// true otherwise, also when no doorbell was waiting. Anything but a doorbell is `EBADMSG`.
    public func takeDoorbell() throws(SystemError) -> Bool {
        var byte: UInt8 = 0
        let length = try withUnsafeMutableBytes(of: &byte) { (bytes) throws(SystemError) in try socket.receiveIfReady(into: bytes) }
        guard let length else { return true }
        if length == 0 { return false }
        guard length == 1, byte == doorbell else { throw SystemError("receive", "shared message channel's doorbell", errno: .badMessage) }
        return true
    }

    /// Set when the socket reached its end while this side slept.
    private var peerEnded = false

    /// Raises the sleeping flag and blocks on the socket until a message has arrived (or the
    /// socket ends, which sets ``peerEnded``).
    private func sleepUntilArrived(_ sequence: UnsafeMutableRawPointer, _ sleeping: UnsafeMutableRawPointer) throws(SystemError) {
        while !arrived(sequence) {
            modeless_store_seqcst32(sleeping, 1)
            if arrived(sequence) {
                // Lower the flag; if the sender already took it down, its doorbell is coming.
                if modeless_exchange_seqcst32(sleeping, 0) == 0, try !awaitDoorbell() { peerEnded = true }
                return
            }
            if try !awaitDoorbell() {
                peerEnded = true
                return
            }
        }
    }

    @inline(__always)
    private func arrived(_ sequence: UnsafeMutableRawPointer) -> Bool {
        modeless_load_seqcst32(sequence) != seenSequence
    }

    /// Spins for up to ``currentSpin`` from `started` while spinning can pay (see
    /// ``peerIsRunningElsewhere(now:)``); true if a message arrived meanwhile.
    private func spinWhileEmpty(_ sequence: UnsafeMutableRawPointer, started: UInt64) -> Bool {
        guard spinNanoseconds > 0 else { return false }
        let cpu = UInt32(bitPattern: modeless_current_cpu())
        // For the peer's same check; written only when it changed, so that the line the peer
        // reads is not pulled away on every wait.
        if (inbox + Self.cpuOffset).load(as: UInt32.self) != cpu { (inbox + Self.cpuOffset).storeBytes(of: cpu, as: UInt32.self) }
        guard currentSpin > 0, peerIsRunningElsewhere(than: cpu, now: started) else { return false }
        let deadline = started &+ currentSpin
        var turns: UInt32 = 0
        while !arrived(sequence) {
            modeless_cpu_relax()
            turns &+= 1
            if turns & 63 == 0 {
                let now = monotonicNanoseconds()
                if now >= deadline || CPUContention.isContended(now: now) { return arrived(sequence) }
            }
        }
        return true
    }

    /// Whether the peer is running on another CPU than `cpu` (this thread's), as far as this
    /// side can tell: it is awake (not asleep in this channel), it last waited on another CPU,
    /// and the machine has no more runnable threads than CPUs (so an awake peer has a CPU).
    private func peerIsRunningElsewhere(than cpu: UInt32, now: UInt64) -> Bool {
        guard modeless_load_seqcst32(outbox + Self.presenceOffset) == Presence.awake else { return false }
        guard (outbox + Self.cpuOffset).load(as: UInt32.self) != cpu else { return false }
        return !CPUContention.isContended(now: now)
    }

    /// Publishes whether this side is awake or asleep in this channel's wait.
    @inline(__always)
    private func setPresence(_ presence: UInt32) {
        modeless_store_seqcst32(inbox + Self.presenceOffset, presence)
    }

    /// After a wait that slept: if the message was sent within the full spin time of the
    /// wait's start, a full spin would have caught it, so the next wait spins in full again;
    /// otherwise it spins half as long (none below 1 µs). The time comes from the sender's
    /// stamp, not from this side's wake-up, which on an idle CPU can take longer than the spin.
    private func adaptSpin(waitStarted: UInt64) {
        guard spinNanoseconds > 0 else { return }
        let sentAt = (inbox + Self.sentAtOffset).load(as: UInt64.self)
        let halved = currentSpin / 2
        currentSpin = sentAt &- waitStarted <= spinNanoseconds || sentAt < waitStarted ? spinNanoseconds : halved < 1000 ? 0 : halved
    }

    /// Blocks for the doorbell; false when the socket reached its end instead.
    private func awaitDoorbell() throws(SystemError) -> Bool {
        var byte: UInt8 = 0
        let length = try withUnsafeMutableBytes(of: &byte) { (bytes) throws(SystemError) in try socket.receive(into: bytes) }
        if length == 0 { return false }
        guard length == 1, byte == doorbell else { throw SystemError("receive", "shared message channel's doorbell", errno: .badMessage) }
        return true
    }
}
