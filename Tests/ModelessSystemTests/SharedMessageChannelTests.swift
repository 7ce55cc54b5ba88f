import Glibc
import ModelessSystem
import Synchronization
import Testing

@Suite("Shared message channel")
struct SharedMessageChannelTests {
    /// A channel over a socket pair: the creator's end and the joiner's end.
    private func channelPair(capacity: Int = 1024, spin: UInt64) throws -> (SharedMessageChannel, SharedMessageChannel, UnixSocket, UnixSocket) {
        let (left, right) = try UnixSocket.pair()
        let (creator, descriptor) = try SharedMessageChannel.create(capacity: capacity, socket: left, spinNanoseconds: spin)
        defer { close(descriptor) }
        let joiner = try SharedMessageChannel(joining: descriptor, capacity: capacity, socket: right, spinNanoseconds: spin)
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
        let (creator, descriptor) = try SharedMessageChannel.create(capacity: 256, socket: left, spinNanoseconds: 0)
        defer { close(descriptor) }
        let joiner = try SharedMessageChannel(joining: descriptor, capacity: 256, socket: right, spinNanoseconds: 0)
        // A hostile creator rewrites the length after sending: the joiner checks it.
        try creator.send(UnsafeRawBufferPointer(start: nil, count: 0))
        let memory = try #require(mmap(nil, 4096 * 2, PROT_READ | PROT_WRITE, MAP_SHARED, descriptor, 0))
        defer { munmap(memory, 4096 * 2) }
        memory.storeBytes(of: UInt32(100_000), toByteOffset: 4096 + 128, as: UInt32.self)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 256, alignment: 8)
        defer { buffer.deallocate() }
        let error = #expect(throws: SystemError.self) { try joiner.receive(into: buffer) }
        #expect(error?.errno == .messageTooLong)
    }

    @Test func anythingButADoorbellOnTheSocketIsRefused() throws {
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
        let unsealed = #expect(throws: SystemError.self) {
            _ = try SharedMessageChannel(joining: file, capacity: 256, socket: right, spinNanoseconds: 0)
        }
        #expect(unsealed?.errno == .invalidArgument)
        // A real channel joined with another capacity has the wrong size.
        let (_, descriptor) = try SharedMessageChannel.create(capacity: 256, socket: left, spinNanoseconds: 0)
        defer { close(descriptor) }
        let wrongSize = #expect(throws: SystemError.self) {
            _ = try SharedMessageChannel(joining: descriptor, capacity: 8192, socket: right, spinNanoseconds: 0)
        }
        #expect(wrongSize?.errno == .invalidArgument)
        // Sealed: the size cannot be changed by anyone holding the descriptor.
        #expect(ftruncate(descriptor, 4096) == -1)
    }
}
