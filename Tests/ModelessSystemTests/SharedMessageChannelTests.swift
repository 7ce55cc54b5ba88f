import Glibc
import ModelessSystem
import Synchronization
import Testing

@Suite("Shared message channel")
struct SharedMessageChannelTests {
    /// A channel over a socket pair: the creator's end and the joiner's end.
    private func channelPair(capacity: Int = 1024, spin: UInt64) throws -> (SharedMessageChannel, SharedMessageChannel, UnixSocket, UnixSocket) {
        let (left, right) = try UnixSocket.pair()
        let (creator, attachment) = try SharedMessageChannel.create(capacity: capacity, socket: left, spinNanoseconds: spin)
        defer { attachment.close() }
        let joiner = try SharedMessageChannel(joining: attachment.descriptors, capacity: capacity, socket: right, spinNanoseconds: spin)
        return (creator, joiner, left, right)
    }

    /// Round trips between two threads, with each message checked: spinning, and sleeping on
    /// the doorbell every time (no spin).
    @Test(arguments: [UInt64(0), 50_000])
    func messagesGoBothWaysIntact(spin: UInt64) throws {
        let (creator, joiner, left, right) = try channelPair(spin: spin)
        defer { left.close(); right.close() }
        let echoed = Atomic<Int>(0)
        let echo = try SystemThread(name: "echo") {
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1024, alignment: 8)
            defer { buffer.deallocate() }
            while let length = try? joiner.receive(into: buffer), length > 0 {
                for index in 0..<length { buffer[index] = buffer[index] &+ 1 }
                guard (try? joiner.send(UnsafeRawBufferPointer(rebasing: buffer[0..<length]))) != nil else { return }
                echoed.wrappingAdd(1, ordering: .relaxed)
            }
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1024, alignment: 8)
        defer { buffer.deallocate() }
        for round in 0..<2000 {
            let length = 1 + round % 1024
            for index in 0..<length { buffer[index] = UInt8(truncatingIfNeeded: round &+ index) }
            try creator.send(UnsafeRawBufferPointer(rebasing: buffer[0..<length]))
            buffer.initializeMemory(as: UInt8.self, repeating: 0)
            #expect(try creator.receive(into: buffer) == length)
            let intact = (0..<length).allSatisfy { buffer[$0] == UInt8(truncatingIfNeeded: round &+ $0 &+ 1) }
            #expect(intact, "round \(round)")
            if !intact { break }
        }
        left.shutdown()  // the echo thread's receive returns 0
        echo.join()
        #expect(echoed.load(ordering: .relaxed) == 2000)
    }

    /// Waits that outlast the spin shrink it to nothing (an idle connection costs no CPU);
    /// answers within the spin time bring it back in full.
    @Test func theSpinAdaptsToHowSoonAnswersCome() throws {
        let spin: UInt64 = 200_000
        let (creator, joiner, left, right) = try channelPair(spin: spin)
        defer { left.close(); right.close() }
        let delay = Atomic<UInt32>(5000)  // microseconds before each answer
        let echo = try SystemThread(name: "slow echo") {
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 8)
            defer { buffer.deallocate() }
            while let length = try? joiner.receive(into: buffer), length > 0 {
                let pause = delay.load(ordering: .relaxed)
                if pause > 0 { usleep(pause) }
                guard (try? joiner.send(UnsafeRawBufferPointer(rebasing: buffer[0..<length]))) != nil else { return }
            }
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 8)
        defer { buffer.deallocate() }
        func roundTrip() throws {
            try creator.send(UnsafeRawBufferPointer(rebasing: buffer[0..<8]))
            #expect(try creator.receive(into: buffer) == 8)
        }
        #expect(creator.nextSpinNanoseconds == spin)
        var spins: [UInt64] = []
        for _ in 0..<12 {
            try roundTrip()
            spins.append(creator.nextSpinNanoseconds)
        }
        #expect(spins.first! < spin, "a 5 ms wait shrinks a 200 µs spin: \(spins)")
        #expect(spins.last == 0, "twelve slow answers leave no spin: \(spins)")
        delay.store(0, ordering: .relaxed)
        var restored = false
        for _ in 0..<200 where !restored {
            try roundTrip()
            restored = creator.nextSpinNanoseconds == spin
        }
        #expect(restored, "quick answers bring the spin back")
        left.shutdown()
        echo.join()
    }

    @Test func aSleepingReceiverSeesThePeerEnd() throws {
        let (_, joiner, left, right) = try channelPair(spin: 0)
        defer { right.close() }
        let ended = Atomic<Int>(-1)
        let waiter = try SystemThread(name: "waiter") {
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 8)
            defer { buffer.deallocate() }
            ended.store((try? joiner.receive(into: buffer)) ?? -2, ordering: .relaxed)
        }
        usleep(50_000)
        left.close()  // as when the peer process dies
        waiter.join()
        #expect(ended.load(ordering: .relaxed) == 0)
    }

    @Test func aLengthBeyondTheCapacityIsRefused() throws {
        let (left, right) = try UnixSocket.pair()
        defer { left.close(); right.close() }
        let (creator, attachment) = try SharedMessageChannel.create(capacity: 256, socket: left, spinNanoseconds: 0)
        defer { attachment.close() }
        let joiner = try SharedMessageChannel(joining: attachment.descriptors, capacity: 256, socket: right, spinNanoseconds: 0)
        // A hostile creator rewrites the length after sending: the joiner checks it.
        try creator.send(UnsafeRawBufferPointer(start: nil, count: 0))
        let memory = try #require(mmap(nil, 4096 * 2, PROT_READ | PROT_WRITE, MAP_SHARED, attachment.memory, 0))
        defer { munmap(memory, 4096 * 2) }
        memory.storeBytes(of: UInt32(100_000), toByteOffset: 4096 + 4, as: UInt32.self)  // the first mailbox's length
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 256, alignment: 8)
        defer { buffer.deallocate() }
        let error = #expect(throws: SystemError.self) { try joiner.receive(into: buffer) }
        #expect(error?.errno == .messageTooLong)
    }

    @Test func aMessageOnTheSocketBesideTheChannelIsRefused() throws {
        let (_, joiner, left, right) = try channelPair(spin: 0)
        defer { left.close(); right.close() }
        var garbage: [UInt8] = [1, 2, 3]
        try garbage.withUnsafeBytes { try left.send($0) }
        garbage[0] = 0
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 8)
        defer { buffer.deallocate() }
        #expect(throws: SystemError.self) { try joiner.receive(into: buffer) }
    }

    @Test func memoryWithoutSealsOrOfTheWrongSizeIsRefused() throws {
        let (left, right) = try UnixSocket.pair()
        defer { left.close(); right.close() }
        // An ordinary file: its size can change under a mapping, so it is refused.
        let path = "/tmp/modeless-channel-\(getpid())"
        let file = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
        defer { close(file); unlink(path) }
        #expect(ftruncate(file, 4096 + 2 * 4096) == 0)
        let (_, attachment) = try SharedMessageChannel.create(capacity: 256, socket: left, spinNanoseconds: 0)
        defer { attachment.close() }
        let doorbells = Array(attachment.descriptors[1...])
        let unsealed = #expect(throws: SystemError.self) {
            _ = try SharedMessageChannel(joining: [file] + doorbells, capacity: 256, socket: right, spinNanoseconds: 0)
        }
        #expect(unsealed?.errno == .invalidArgument)
        // A real channel joined with another capacity has the wrong size.
        let wrongSize = #expect(throws: SystemError.self) {
            _ = try SharedMessageChannel(joining: attachment.descriptors, capacity: 8192, socket: right, spinNanoseconds: 0)
        }
        #expect(wrongSize?.errno == .invalidArgument)
        // Sealed: the size cannot be changed by anyone holding the descriptor.
        #expect(ftruncate(attachment.memory, 4096) == -1)
        // Doorbells that are not eventfds (here the file), or missing, are refused.
        for descriptors in [[attachment.memory, file, doorbells[1]], [attachment.memory, doorbells[0]]] {
            let refused = #expect(throws: SystemError.self) {
                _ = try SharedMessageChannel(joining: descriptors, capacity: 256, socket: right, spinNanoseconds: 0)
            }
            #expect(refused?.errno == .invalidArgument)
        }
    }
}

@Suite("Shared message channel: adaptive waiting")
struct SharedMessageChannelWaitingTests {
    private func channelPair(spin: UInt64, joinerSpin: UInt64? = nil) throws -> (SharedMessageChannel, SharedMessageChannel, SharedMessageChannel.Attachment, UnixSocket, UnixSocket) {
        let (left, right) = try UnixSocket.pair()
        let (creator, descriptor) = try SharedMessageChannel.create(capacity: 256, socket: left, spinNanoseconds: spin)
        let joiner = try SharedMessageChannel(joining: descriptor.descriptors, capacity: 256, socket: right, spinNanoseconds: joinerSpin ?? spin)
        return (creator, joiner, descriptor, left, right)
    }

    /// Polls `condition` for up to 5 s.
    private func eventually(_ condition: () -> Bool) -> Bool {
        for _ in 0..<5000 {
            if condition() { return true }
            usleep(1000)
        }
        return condition()
    }

    /// Each side publishes whether it sleeps in the channel: the other side sees it asleep
    /// while it waits for a message, and awake once it has taken one.
    @Test func eachSideSeesWhetherThePeerSleepsInTheChannel() throws {
        let (creator, joiner, descriptor, left, right) = try channelPair(spin: 0)
        defer { descriptor.close(); left.close(); right.close() }
        #expect(creator.peerIsAwake && joiner.peerIsAwake, "both start awake")
        let waiter = try SystemThread(name: "waiter") {
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 8)
            defer { buffer.deallocate() }
            _ = try? joiner.receive(into: buffer)
        }
        #expect(eventually { !creator.peerIsAwake }, "the joiner sleeps in receive")
        #expect(joiner.peerIsAwake, "the creator is not waiting")
        try creator.send(UnsafeRawBufferPointer(start: nil, count: 0))
        waiter.join()
        #expect(creator.peerIsAwake, "the joiner took the message and is awake again")
    }

    /// A receiver whose peer sleeps in the channel (waiting for this side, so not about to
    /// send) does not spin: it sleeps at once, and so sees its socket end at once rather than
    /// after the spin.
    @Test func aReceiverDoesNotSpinWhileThePeerSleeps() throws {
        let spin: UInt64 = 3_000_000_000
        let (creator, joiner, descriptor, left, right) = try channelPair(spin: spin, joinerSpin: 0)
        defer { descriptor.close(); right.close() }
        let peer = try SystemThread(name: "sleeping peer") {
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 8)
            defer { buffer.deallocate() }
            _ = try? joiner.receive(into: buffer)
        }
        #expect(eventually { !creator.peerIsAwake }, "the joiner sleeps in receive")
        let started = monotonicNanoseconds()
        let waiter = try SystemThread(name: "waiter") {
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 8)
            defer { buffer.deallocate() }
            _ = try? creator.receive(into: buffer)
        }
        usleep(100_000)
        left.shutdown()  // the creator's receive returns 0 once it sleeps on the socket
        waiter.join()
        let waited = monotonicNanoseconds() - started
        #expect(waited < spin / 2, "returned after \(waited / 1_000_000) ms: it slept at once instead of spinning")
        right.shutdown()
        peer.join()
        left.close()
    }

    /// The spin adapts to when the peer sent, from the sender's time stamp, not to when this
    /// side woke: a receiver whose spin shrank to nothing sleeps at once, and however late it
    /// wakes, a message sent within the spin time of its wait brings the full spin back
    /// (measuring the whole wait, a wake-up slower than the spin would keep it at nothing).
    @Test func aSlowWakeUpDoesNotKeepTheSpinAtNothing() throws {
        let spin: UInt64 = 64_000
        let (creator, joiner, descriptor, left, right) = try channelPair(spin: spin)
        defer { descriptor.close(); left.close(); right.close() }
        let receiveOne: @Sendable () -> Void = {
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 8)
            defer { buffer.deallocate() }
            _ = try? joiner.receive(into: buffer)
        }
        // Answers 2 ms late shrink the joiner's spin to nothing.
        for _ in 0..<12 where joiner.nextSpinNanoseconds > 0 {
            let waiter = try SystemThread(name: "waiter", receiveOne)
            usleep(2000)
            try creator.send(UnsafeRawBufferPointer(start: nil, count: 0))
            waiter.join()
        }
        #expect(joiner.nextSpinNanoseconds == 0)
        // A message stamped as sent before the wait began, whose doorbell is rung 200 ms later.
        let memory = try #require(mmap(nil, 3 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED, descriptor.memory, 0))
        defer { munmap(memory, 3 * 4096) }
        let mailbox = memory + 4096  // the creator's outbox, the joiner's inbox
        let stamp = monotonicNanoseconds()
        let waiter = try SystemThread(name: "waiter", receiveOne)
        #expect(eventually { !creator.peerIsAwake }, "the joiner sleeps at once")
        usleep(200_000)
        mailbox.storeBytes(of: UInt32(0), toByteOffset: 4, as: UInt32.self)  // the length
        mailbox.storeBytes(of: stamp, toByteOffset: 8, as: UInt64.self)  // the time it was sent
        let sequence = mailbox.load(as: UInt32.self) &+ 1
        mailbox.storeBytes(of: sequence, as: UInt32.self)
        mailbox.storeBytes(of: UInt32(0), toByteOffset: 64, as: UInt32.self)  // the sleeping flag, taken down
        var ring: UInt64 = 1
        #expect(write(descriptor.descriptors[2], &ring, 8) == 8)  // the joiner's doorbell
        waiter.join()
        #expect(joiner.nextSpinNanoseconds == spin, "a message sent within the spin brings it back, whatever the wake-up took")
    }

    /// A side that rang the doorbell of a sleeping peer spins through the peer's wake-up
    /// (up to ``SharedMessageChannel/wakeSpinFactor`` spins) instead of sleeping at once as it
    /// does for a peer asleep that it did not wake; otherwise two sides that each find the
    /// other asleep would never spin again. The two run on different CPUs; the spin is judged
    /// only when the machine had no more runnable threads than CPUs, where spinning is allowed.
    ///
    /// The contention sample is taken once the exchange is over, and other suites run beside
    /// this one, so a round can be judged uncontended when it was not throughout: up to five
    /// rounds run, and one that spun through passes (a side that never does fails them all).
    @Test func aSideThatWokeItsPeerSpinsThroughTheWakeUp() throws {
        guard SystemThread.cpuCount >= 2 else { return }
        var judged: [Bool] = []
        for _ in 0..<5 {
            guard let spunThrough = try wakeUpRound() else { continue }
            judged.append(spunThrough)
            if spunThrough { break }
        }
        #expect(judged.isEmpty || judged.contains(true), "the side that rang the doorbell slept at once in every uncontended round: \(judged)")
    }

    /// One round of ``aSideThatWokeItsPeerSpinsThroughTheWakeUp()``: whether the side that rang
    /// the doorbell was still awake when its peer woke, or nil when the CPUs were contended.
    private func wakeUpRound() throws -> Bool? {
        let spin: UInt64 = 40_000_000  // 40 ms, so a 200 ms window through a wake-up
        let (creator, joiner, descriptor, left, right) = try channelPair(spin: spin)
        defer { descriptor.close(); left.close(); right.close() }
        let creatorSpunThrough = Atomic<Int>(-1)  // 1: the creator was awake when the joiner woke
        let peer = try SystemThread(name: "woken peer", placement: .init(cpu: 1)) {
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 8)
            defer { buffer.deallocate() }
            guard let length = try? joiner.receive(into: buffer), length > 0 else { return }
            creatorSpunThrough.store(joiner.peerIsAwake ? 1 : 0, ordering: .relaxed)
            _ = try? joiner.send(UnsafeRawBufferPointer(rebasing: buffer[0..<length]))
        }
        #expect(eventually { !creator.peerIsAwake }, "the joiner sleeps in receive")
        let contended = Atomic<Bool>(true)
        let waiter = try SystemThread(name: "waker", placement: .init(cpu: 0)) {
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 8)
            defer { buffer.deallocate() }
            guard (try? creator.send(UnsafeRawBufferPointer(rebasing: buffer[0..<8]))) != nil else { return }
            _ = try? creator.receive(into: buffer)
            // The sample the wait judged by (one sample serves the whole process for a millisecond).
            contended.store(CPUContention.isContended(now: monotonicNanoseconds()), ordering: .relaxed)
        }
        waiter.join()
        peer.join()
        return contended.load(ordering: .relaxed) ? nil : creatorSpunThrough.load(ordering: .relaxed) == 1
    }
}

@Suite("CPU contention")
struct CPUContentionTests {
    @Test(arguments: [("0.50 0.40 0.30 3/345 12345\n", 3), ("12.01 9.99 4.00 27/1002 999", 27), ("0 0 0 1/1 1", 1)])
    func theRunningCountIsReadFromLoadavg(_ line: String, _ running: Int) {
        let parsed = Array(line.utf8).withUnsafeBufferPointer { CPUContention.parseRunning($0) }
        #expect(parsed == running)
    }

    @Test(arguments: ["", "0.50 0.40 0.30", "0.50 0.40 0.30 /345 1", "0.50 0.40 0.30 3 345", "a b c x/1 2", "0.5 0.4 0.3 99999999999/1 1"])
    func aMalformedLineGivesNothing(_ line: String) {
        #expect(Array(line.utf8).withUnsafeBufferPointer { CPUContention.parseRunning($0) } == nil)
    }

    @Test func thisMachineCountsItsRunnableThreads() throws {
        let running = try #require(CPUContention.runnableThreads(), "/proc/loadavg is readable on Linux")
        #expect(running >= 1, "the reader itself is running")
        _ = CPUContention.isContended(now: monotonicNanoseconds())
    }
}
