import ModelessDevice
import ModelessRuntime
import ModelessSystem
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Moves Ethernet frames between a TAP interface and the e1000 driver, so that the kernel's
/// own IP stack uses the NIC through the user-mode (or kernel-emulation) driver.
///
/// - **NIC to kernel**: the driver's receive path (its receive DPC, NAPI style, or its polling
///   thread) lends each received frame, in place in its DMA buffer, to a handler that writes
///   it to the TAP: one `write(2)`, no other copy. The TAP is non-blocking, so the handler never
///   waits; a frame the kernel does not take (interface down) is counted and dropped, as a
///   wire would lose it.
/// - **Kernel to NIC**: a thread of the pump waits in epoll on the TAP and a stop eventfd (so
///   it sleeps while nothing is sent), then reads up to ``batch`` frames, each into its slot of
///   a staging area allocated once, and hands them to the driver as one transmit batch (one
///   tail doorbell). When the transmit ring is full it naps 20 µs at a time for descriptors, up
///   to ``transmitPatience``, and then drops what is left of the batch.
///
/// The pump holds neither the TAP nor the driver: the caller opens them, starts the pump,
/// ``stop()``s it, then stops the driver and closes the TAP.
public final class E1000TapPump: @unchecked Sendable {
    /// What went through the pump.
    public struct Statistics: Sendable, Equatable {
        /// Frames handed to the kernel (NIC → TAP), and those it did not take.
        public var toKernel = 0, notTakenByKernel = 0
        /// Frames queued on the NIC (TAP → NIC), the batches they went in, and those dropped
        /// (a length outside 14–1514 bytes, or no descriptor within the patience).
        public var toNIC = 0, transmitBatches = 0, droppedToNIC = 0
    }

    /// The most frames read from the TAP and sent as one batch.
    public let batch: Int
    /// How long a transmit batch waits for free descriptors before the rest is dropped.
    public let transmitPatience: Duration

    private let driver: E1000Driver
    private let tap: TapInterface
    private let stopSignal: EventNotifier
    private let poll: EventPoll
    private let counters = Counters()
    /// Why the pump's thread ended; written by that thread, read by callers (passive level only).
    private let failureText: PassiveLock<String?>
    private var thread: SystemThread?

    /// The slot size of the staging area: a whole frame always fits.
    private static let slotSize = 2048
    private static let tapToken: UInt64 = 1, stopToken: UInt64 = 2

    private final class Counters: Sendable {
        let toKernel = Atomic<Int>(0), notTakenByKernel = Atomic<Int>(0)
        let toNIC = Atomic<Int>(0), transmitBatches = Atomic<Int>(0), droppedToNIC = Atomic<Int>(0)
    }

    /// A pump between `driver` and `tap`, not started. `batch`: 1 to the ring's capacity.
    public init(driver: E1000Driver, tap: TapInterface, batch: Int = 32, transmitPatience: Duration = .seconds(1)) throws {
        guard (1...driver.ringSize - 1).contains(batch) else {
            throw E1000Driver.Failure.badConfiguration("a transmit batch is 1 to \(driver.ringSize - 1) frames with \(driver.ringSize)-descriptor rings, not \(batch)")
        }
        self.driver = driver
        self.tap = tap
        self.batch = batch
        self.transmitPatience = transmitPatience
        failureText = driver.runtime.makePassiveLock("e1000 tap failure", nil)
        stopSignal = try EventNotifier(nonBlocking: true)
        do {
            poll = try EventPoll()
        } catch {
            stopSignal.close()
            throw error
        }
    }

    /// Starts both directions.
    public func start() throws {
        try poll.add(tap.fd, token: Self.tapToken, .readable)
        try poll.add(stopSignal.fd, token: Self.stopToken, .readable)
        let tap = self.tap, counters = self.counters
        driver.onFrameView = { frame in
            if frame.withUnsafeBytes({ tap.write($0) }) {
                counters.toKernel.add(1, ordering: .relaxed)
            } else {
                counters.notTakenByKernel.add(1, ordering: .relaxed)
            }
        }
        do {
            thread = try SystemThread(name: "tap \(tap.name)") { [self] in self.transmitLoop() }
        } catch {
            driver.onFrameView = nil
            throw error
        }
    }

    /// Stops both directions and waits for the pump's thread. Idempotent. The driver keeps
    /// running (with no frame handler) until the caller stops it.
    public func stop() {
        if let thread {
            try? stopSignal.signal()
            thread.join()
            self.thread = nil
        }
        driver.onFrameView = nil
        poll.close()
        stopSignal.close()
    }

    /// Why the pump's thread ended on its own (the NIC stopped answering, the TAP failed);
    /// nil while it runs.
    public var failure: String? { failureText.withLock { $0 } }

    /// What went through so far.
    public var statistics: Statistics {
        Statistics(toKernel: counters.toKernel.load(ordering: .relaxed),
                   notTakenByKernel: counters.notTakenByKernel.load(ordering: .relaxed),
                   toNIC: counters.toNIC.load(ordering: .relaxed),
                   transmitBatches: counters.transmitBatches.load(ordering: .relaxed),
                   droppedToNIC: counters.droppedToNIC.load(ordering: .relaxed))
    }

    /// The kernel-to-NIC direction, on the pump's thread.
    private func transmitLoop() {
        let staging = UnsafeMutableRawBufferPointer.allocate(byteCount: batch * Self.slotSize, alignment: 64)
        let lengths = UnsafeMutableBufferPointer<Int>.allocate(capacity: batch)
        defer {
            staging.deallocate()
            lengths.deallocate()
        }
        do {
            while true {
                guard let event = try poll.wait(timeoutMilliseconds: -1) else { continue }
                if event.token == Self.stopToken { return }
                var count = 0
                while count < batch {
                    let slot = UnsafeMutableRawBufferPointer(rebasing: staging[count * Self.slotSize ..< (count + 1) * Self.slotSize])
                    guard let length = try tap.read(into: slot) else { break }
                    if (E1000Driver.minimumFrame...E1000Driver.maximumFrame).contains(length) {
                        lengths[count] = length
                        count += 1
                    } else {
                        counters.droppedToNIC.add(1, ordering: .relaxed)
                    }
                }
                if count > 0, !(try send(count, staging, lengths)) { return }
            }
        } catch {
            failureText.withLock { $0 = "\(error)" }
        }
    }

    /// Sends the `count` staged frames, in batches as descriptors allow; false if a stop was
    /// asked for meanwhile.
    private func send(_ count: Int, _ staging: UnsafeMutableRawBufferPointer, _ lengths: UnsafeMutableBufferPointer<Int>) throws -> Bool {
        var sent = 0
        let start = ContinuousClock.now
        while sent < count {
            let first = sent
            let queued = try driver.transmitFrames(count: count - sent) { index, writer in
                let slot = first + index
                let offset = slot * Self.slotSize
                writer.copy(from: UnsafeRawBufferPointer(rebasing: staging[offset ..< offset + lengths[slot]]), at: 0)
            }
            if queued > 0 {
                sent += queued
                counters.toNIC.add(queued, ordering: .relaxed)
                counters.transmitBatches.add(1, ordering: .relaxed)
                continue
            }
            if stopRequested { return false }
            if ContinuousClock.now - start > transmitPatience {
                counters.droppedToNIC.add(count - sent, ordering: .relaxed)
                return true
            }
            usleep(20)
        }
        return true
    }

    /// Whether ``stop()`` has signalled (the eventfd is readable), without consuming it.
    private var stopRequested: Bool {
        var descriptor = pollfd(fd: stopSignal.fd, events: Int16(POLLIN), revents: 0)
        return Glibc.poll(&descriptor, 1, 0) == 1
    }
}
