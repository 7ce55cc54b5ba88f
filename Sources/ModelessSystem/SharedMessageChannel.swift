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
/// so a connection that sits idle between messages stops costing CPU.
///
/// A side that has just rung the doorbell of a sleeping peer spins too, for up to
/// ``wakeSpinFactor`` times as long: the peer it woke is about to run, and on another CPU it
/// answers within that window. Without this, two sides that each find the other asleep
/// whenever they decide would never spin again, and every hand-off would pay a wake-up across
/// CPUs (tens of microseconds where idle CPUs halt, as in a virtual machine). The woken peer
/// publishes the CPU it runs on as it wakes; if that is the spinner's own CPU, the spinner
/// stops at once and sleeps, so as not to hold the CPU the peer needs.
///
/// To sleep, the receiver
/// raises a "sleeping" flag and blocks on its doorbell, an eventfd of its own that the creator
/// made and sent with the memory, and the sender, seeing the flag, rings it (an eventfd write
/// costs less than a socket message: no buffer is allocated). Each side stores its own word
/// then reads the other's, with sequentially consistent ordering, so a doorbell is never lost
/// and never rung twice. The sleeper waits on its doorbell and on the socket together, which
/// keeps the socket's guarantee: when either process ends, the other's receive returns 0 at
/// once.
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
/// messages with ``receiveIfArrived(into:spinning:)``, polling each channel's
/// ``doorbellDescriptor`` and socket.
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
    /// Whether this side's last send rang the doorbell of a sleeping peer, which is now waking.
    private var wokePeer = false
    /// How long the wait now under way may spin, from its start (for the adaptation).
    private var waitWindow: UInt64 = 0

    /// How many times the current spin a side waits through a peer it has just woken.
    public static let wakeSpinFactor: UInt64 = 5

    /// How long this side's next wait will spin before sleeping (for diagnostics and tests;
    /// read it on the receiving thread).
    public var nextSpinNanoseconds: UInt64 { currentSpin }

    /// Whether the peer is awake, as it published: false while it sleeps in this channel's
    /// wait, waiting for a message from this side (for diagnostics and tests).
    public var peerIsAwake: Bool { modeless_load_seqcst32(outbox + Self.presenceOffset) == Presence.awake }
    /// The eventfd this side sleeps on, and the peer's, which this side rings.
    private let ownDoorbell: Int32
    private let peerDoorbell: Int32

    /// What the creator sends its peer to join a channel (``create(capacity:socket:spinNanoseconds:)``
    /// makes it; `SCM_RIGHTS` carries it): the memory, the creator's doorbell and the joiner's,
    /// in that order. They are the holder's to close (``close()``); the channel keeps its own.
    public struct Attachment: Sendable {
        /// The memory (a sealed memfd), the creator's doorbell and the joiner's (eventfds).
        public let descriptors: [Int32]
        /// The shared memory's descriptor.
        public var memory: Int32 { descriptors[0] }
        /// Closes the descriptors.
        public func close() { for descriptor in descriptors { _ = Glibc.close(descriptor) } }
    }

    // Layout: a 4 KiB header page, then two mailboxes (the creator sends in the first).
    // In a mailbox: the sequence number at 0, the message length at 4 and the time it was sent
    // at 8 (one cache line, all written by the sender, so the receiver that sees the sequence
    // move fetches one line for all three); the receiver's sleeping flag at 64 (its own line);
    // the receiver's presence (awake or asleep) at 192 and the CPU it last waited on at 196;
    // the message at 256.
    private static let magic: UInt64 = 0x3430_4E41_4843_4C4D  // "MLCHAN04"
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

    /// Makes the shared memory and the two doorbells for a channel over `socket` whose
    /// messages are at most `capacity` bytes. Returns the channel and what to send the peer
    /// (with `UnixSocket.send(_:attaching:)`), which the caller closes after sending.
    public static func create(capacity: Int, socket: UnixSocket, spinNanoseconds: UInt64) throws(SystemError) -> (SharedMessageChannel, attachment: Attachment) {
        precondition(capacity > 0 && capacity <= Int(UInt32.max) - messageOffset, "a channel's capacity must fit a mailbox")
        let size = fileSize(capacity)
        var made: [Int32] = []
        do throws(SystemError) {
            made.append(try systemCall("memfd_create", "message channel") { modeless_memfd("modeless-channel") })
            _ = try systemCall("ftruncate", "message channel") { ftruncate(made[0], off_t(size)) }
            _ = try systemCall("seal", "message channel") { modeless_seal_size(made[0]) }
            for _ in 0..<2 { made.append(try systemCall("eventfd", "message channel's doorbell") { modeless_eventfd(0, O_CLOEXEC | O_NONBLOCK) }) }
            // The channel's own copies of the doorbells; the attachment's go to the peer.
            let creatorDoorbell = try duplicate(made[1])
            let joinerDoorbell: Int32
            do { joinerDoorbell = try duplicate(made[2]) } catch {
                Glibc.close(creatorDoorbell)
                throw error
            }
            let base: UnsafeMutableRawPointer
            do { base = try map(made[0], size: size) } catch {
                Glibc.close(creatorDoorbell)
                Glibc.close(joinerDoorbell)
                throw error
            }
            base.storeBytes(of: magic.littleEndian, as: UInt64.self)
            base.storeBytes(of: UInt32(capacity).littleEndian, toByteOffset: 8, as: UInt32.self)
            let channel = SharedMessageChannel(base: base, size: size, capacity: capacity, creator: true, socket: socket, spinNanoseconds: spinNanoseconds,
                                               ownDoorbell: creatorDoorbell, peerDoorbell: joinerDoorbell)
            return (channel, Attachment(descriptors: made))
        } catch {
            Attachment(descriptors: made).close()
            throw error
        }
    }

    /// Joins the channel a peer made with ``create(capacity:socket:spinNanoseconds:)`` from
    /// the descriptors it sent (``Attachment/descriptors``), which stay the caller's to close.
    /// Refuses, with `EINVAL`, anything but three descriptors, memory whose size is not sealed
    /// or not that of a channel of `capacity`, or that does not start with the channel's
    /// header, and doorbells that are not eventfds.
    public convenience init(joining descriptors: [Int32], capacity: Int, socket: UnixSocket, spinNanoseconds: UInt64) throws(SystemError) {
        guard descriptors.count == 3 else {
            throw SystemError("join (\(descriptors.count) descriptors, not the memory and two doorbells)", "shared message channel", errno: .invalidArgument)
        }
        let size = Self.fileSize(capacity)
        var status = stat()
        _ = try systemCall("fstat", "shared message channel") { fstat(descriptors[0], &status) }
        guard (status.st_mode & S_IFMT) == S_IFREG, Int(status.st_size) == size, modeless_size_is_sealed(descriptors[0]) == 1 else {
            throw SystemError("join (the memory is not a size-sealed \(size)-byte channel)", "shared message channel", errno: .invalidArgument)
        }
        guard Self.isEventDescriptor(descriptors[1]), Self.isEventDescriptor(descriptors[2]) else {
            throw SystemError("join (the doorbells are not eventfds)", "shared message channel", errno: .invalidArgument)
        }
        let base = try Self.map(descriptors[0], size: size)
        guard UInt64(littleEndian: base.load(as: UInt64.self)) == Self.magic,
              UInt32(littleEndian: base.load(fromByteOffset: 8, as: UInt32.self)) == UInt32(capacity) else {
            munmap(base, size)
            throw SystemError("join (the memory has no channel header of capacity \(capacity))", "shared message channel", errno: .invalidArgument)
        }
        let own: Int32, peer: Int32
        do throws(SystemError) {
            own = try Self.duplicate(descriptors[2])
            do { peer = try Self.duplicate(descriptors[1]) } catch {
                Glibc.close(own)
                throw error
            }
        } catch {
            munmap(base, size)
            throw error
        }
        self.init(base: base, size: size, capacity: capacity, creator: false, socket: socket, spinNanoseconds: spinNanoseconds,
                  ownDoorbell: own, peerDoorbell: peer)
    }

    private init(base: UnsafeMutableRawPointer, size: Int, capacity: Int, creator: Bool, socket: UnixSocket, spinNanoseconds: UInt64,
                 ownDoorbell: Int32, peerDoorbell: Int32) {
        self.base = base
        self.size = size
        self.capacity = capacity
        self.socket = socket
        self.spinNanoseconds = spinNanoseconds
        self.ownDoorbell = ownDoorbell
        self.peerDoorbell = peerDoorbell
        currentSpin = spinNanoseconds
        let first = base + 4096
        let second = first + Self.mailboxSize(capacity)
        outbox = creator ? first : second
        inbox = creator ? second : first
        // Start from what the mailboxes hold now, so a channel joined later does not see old messages.
        sentSequence = modeless_load_seqcst32(outbox + Self.sequenceOffset)
        seenSequence = modeless_load_seqcst32(inbox + Self.sequenceOffset)
    }

    private static func duplicate(_ descriptor: Int32) throws(SystemError) -> Int32 {
        try systemCall("fcntl F_DUPFD_CLOEXEC", "message channel's doorbell") { fcntl(descriptor, F_DUPFD_CLOEXEC, 0) }
    }

    /// Whether `descriptor` is an eventfd (its `/proc/self/fd` link names one).
    private static func isEventDescriptor(_ descriptor: Int32) -> Bool {
        withUnsafeTemporaryAllocation(of: CChar.self, capacity: 64) { target in
            let length = readlink("/proc/self/fd/\(descriptor)", target.baseAddress!, 63)
            guard length > 0 else { return false }
            target[length] = 0
            return String(cString: target.baseAddress!) == "anon_inode:[eventfd]"
        }
    }

    /// The descriptor this side's doorbell rings on, for a receiver that waits for many
    /// channels with one poll (``receiveIfArrived(into:spinning:)``): readable when rung.
    public var doorbellDescriptor: Int32 { ownDoorbell }

    private static func map(_ fd: Int32, size: Int) throws(SystemError) -> UnsafeMutableRawPointer {
        guard let address = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), address != MAP_FAILED else {
            throw SystemError("mmap", "shared message channel", errno: .current)
        }
        return address
    }

    deinit {
        munmap(base, size)
        Glibc.close(ownDoorbell)
        Glibc.close(peerDoorbell)
    }

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
        wokePeer = false
        if modeless_load_seqcst32(outbox + Self.sleepingOffset) == 1,
           modeless_exchange_seqcst32(outbox + Self.sleepingOffset, 0) == 1 {
            try ring()
            wokePeer = true
        }
    }

    /// Waits for the next message and copies it into `buffer`; returns its length, or 0 when
    /// the peer has ended (or the socket was shut down). A length beyond the capacity or the
    /// buffer is `EMSGSIZE`; any message on the socket is `EBADMSG`.
    public func receive(into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> Int {
        let sequence = inbox + Self.sequenceOffset
        let sleeping = inbox + Self.sleepingOffset
        if !arrived(sequence) {
            let started = spinNanoseconds > 0 ? monotonicNanoseconds() : 0
            if spinWhileEmpty(sequence, started: started) {
                currentSpin = spinNanoseconds
            } else {
                setPresence(Presence.asleep)
                defer { wake() }
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
    /// returns nil. After nil the caller waits until the doorbell (``doorbellDescriptor``) is
    /// readable, calls ``takeDoorbell()``, then calls this again (and, when the socket becomes
    /// readable instead, asks ``socketHasEnded()``): a sender that finds the flag up rings the
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
        if flagRaised {
            wake()
            // If the sender took the flag down first, its doorbell comes anyway: a wake-up to spare.
            _ = modeless_exchange_seqcst32(sleeping, 0)
            flagRaised = false
        } else {
            setPresence(Presence.awake)
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

    /// Takes the doorbell if it was rung, without blocking, for a receiver that
    /// ``receiveIfArrived(into:spinning:)`` left asleep and whose doorbell became readable.
    public func takeDoorbell() {
        var count: UInt64 = 0
        _ = read(ownDoorbell, &count, 8)  // EAGAIN: not rung (a wake-up to spare)
    }

    /// Whether the socket beside the channel has reached its end (the peer ended, or the
    /// socket was shut down), without blocking, for a receiver whose socket became readable.
    /// Nothing but the end may come on it once the channel is in use: a message is `EBADMSG`.
    public func socketHasEnded() throws(SystemError) -> Bool {
        var byte: UInt8 = 0
        let length = try withUnsafeMutableBytes(of: &byte) { (bytes) throws(SystemError) in try socket.receiveIfReady(into: bytes) }
        guard let length else { return false }
        if length == 0 { return true }
        throw SystemError("receive", "shared message channel's socket (a message where only its end may come)", errno: .badMessage)
    }

    /// Rings the peer's doorbell.
    private func ring() throws(SystemError) {
        var one: UInt64 = 1
        _ = try systemCall("write", "shared message channel's doorbell") { write(peerDoorbell, &one, 8) }
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
    /// ``peer(from:)``), or up to ``wakeSpinFactor`` times that through the wake-up of a
    /// peer this side just woke; true if a message arrived meanwhile.
    private func spinWhileEmpty(_ sequence: UnsafeMutableRawPointer, started: UInt64) -> Bool {
        waitWindow = spinNanoseconds
        guard spinNanoseconds > 0 else { return false }
        let cpu = publishCPU()
        guard currentSpin > 0, !CPUContention.isContended(now: started) else { return false }
        let waking: Bool
        switch peer(from: cpu) {
        case .elsewhere: waking = false
        case .asleep where wokePeer: waking = true
        case .asleep, .here: return false
        }
        let window = waking ? currentSpin &* Self.wakeSpinFactor : currentSpin
        waitWindow = waking ? spinNanoseconds &* Self.wakeSpinFactor : spinNanoseconds
        let deadline = started &+ window
        var turns: UInt32 = 0
        while !arrived(sequence) {
            modeless_cpu_relax()
            turns &+= 1
            if turns & 63 == 0 {
                let now = monotonicNanoseconds()
                if now >= deadline || CPUContention.isContended(now: now) { return arrived(sequence) }
                // The woken peer came up on this CPU: spinning would only keep it waiting.
                if waking, peer(from: cpu) == .here { return arrived(sequence) }
            }
        }
        return true
    }

    /// Where the peer is, as far as this side can tell from what it published.
    private enum PeerWhereabouts {
        /// Asleep in this channel's wait (or woken and not yet running).
        case asleep
        /// Awake, and it last waited or woke on this side's CPU: it needs this CPU to answer.
        case here
        /// Awake, and it last waited or woke on another CPU.
        case elsewhere
    }

    /// Where the peer is, against `cpu` (this thread's).
    @inline(__always)
    private func peer(from cpu: UInt32) -> PeerWhereabouts {
        guard modeless_load_seqcst32(outbox + Self.presenceOffset) == Presence.awake else { return .asleep }
        return modeless_load_seqcst32(outbox + Self.cpuOffset) == cpu ? .here : .elsewhere
    }

    /// Publishes the CPU this thread runs on, for the peer's ``peer(from:)``; written only
    /// when it changed, so that the line the peer reads is not pulled away on every wait.
    @inline(__always)
    private func publishCPU() -> UInt32 {
        let cpu = UInt32(bitPattern: modeless_current_cpu())
        if modeless_load_seqcst32(inbox + Self.cpuOffset) != cpu { modeless_store_seqcst32(inbox + Self.cpuOffset, cpu) }
        return cpu
    }

    /// After sleeping: publishes the CPU this side woke on, then that it is awake (in that
    /// order, so a peer that sees it awake sees where).
    @inline(__always)
    private func wake() {
        _ = publishCPU()
        setPresence(Presence.awake)
    }

    /// Publishes whether this side is awake or asleep in this channel's wait.
    @inline(__always)
    private func setPresence(_ presence: UInt32) {
        modeless_store_seqcst32(inbox + Self.presenceOffset, presence)
    }

    /// After a wait that slept: if the message was sent within the wait's full window (the
    /// full spin, or the full spin through a peer's wake-up) of its start, a full spin would
    /// have caught it, so the next wait spins in full again; otherwise it spins half as long
    /// (none below 1 µs). The time comes from the sender's stamp, not from this side's wake-up,
    /// which on an idle CPU can take longer than the spin.
    private func adaptSpin(waitStarted: UInt64) {
        guard spinNanoseconds > 0 else { return }
        let sentAt = (inbox + Self.sentAtOffset).load(as: UInt64.self)
        let halved = currentSpin / 2
        let window = max(waitWindow, spinNanoseconds)
        currentSpin = sentAt &- waitStarted <= window || sentAt < waitStarted ? spinNanoseconds : halved < 1000 ? 0 : halved
    }

    /// Blocks until the doorbell is rung or the socket becomes readable; false when the
    /// socket reached its end. Either way the doorbell is taken.
    private func awaitDoorbell() throws(SystemError) -> Bool {
        while true {
            var entries = (pollfd(fd: ownDoorbell, events: Int16(POLLIN), revents: 0), pollfd(fd: socket.fd, events: Int16(POLLIN), revents: 0))
            let ready = withUnsafeMutableBytes(of: &entries) { poll($0.baseAddress!.assumingMemoryBound(to: pollfd.self), 2, -1) }
            if ready < 0 {
                if errno == EINTR { continue }
                throw SystemError("poll", "shared message channel's doorbell", errno: .current)
            }
            if entries.1.revents != 0, try socketHasEnded() { return false }
            if entries.0.revents != 0 {
                takeDoorbell()
                return true
            }
        }
    }
}
