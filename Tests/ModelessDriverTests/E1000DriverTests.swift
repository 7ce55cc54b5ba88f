import ModelessDevice
import ModelessDrivers
import ModelessModels
import ModelessRuntime
import ModelessSystem
import Synchronization
import Testing

/// The e1000 driver against the e1000 model, in both modes, with INTx and polling, under the
/// driver verifier.
@Suite("The e1000 driver against the e1000 model")
struct E1000DriverTests {
    final class Received: @unchecked Sendable {
        let frames = Mutex<[[UInt8]]>([])
        func wait(for count: Int) -> [[UInt8]] {
            for _ in 0..<10_000 where frames.withLock({ $0.count }) < count { usleep(1000) }
            return frames.withLock { $0 }
        }
    }

    func withDriver(_ mode: ExecutionMode, _ interrupt: InterruptKind?, model: E1000Model = E1000Model(),
                    _ body: (E1000Driver, E1000Model, Received, any DriverRuntime) throws -> Void) throws {
        try withE1000(mode, interrupt.map { .interrupts($0) } ?? .pollingThread, model: model) { driver, model, runtime in
            let received = Received()
            driver.onFrame = { frame in received.frames.withLock { $0.append(frame) } }
            try body(driver, model, received, runtime)
        }
    }

    static let settings: [(ExecutionMode, InterruptKind?)] = [(.user, .intx), (.kernelEmulation, .intx), (.user, nil), (.kernelEmulation, nil)]

    @Test(arguments: 0..<4)
    func bringsTheLinkUpWithTheEEPROMsAddress(_ setting: Int) throws {
        let (mode, interrupt) = Self.settings[setting]
        try withDriver(mode, interrupt, model: E1000Model(mac: [2, 0, 0, 0xAA, 0xBB, 0xCC])) { driver, _, _, _ in
            #expect(driver.macAddress == [2, 0, 0, 0xAA, 0xBB, 0xCC])
            #expect(driver.variant == .i82540EM)
            #expect(driver.linkUp)
            #expect(driver.failure == nil)
        }
    }

    /// 100 frames through 32-descriptor rings: more than three turns. (This test found the
    /// driver filling the whole transmit ring, which the NIC reads as empty.)
    @Test(arguments: 0..<4)
    func framesGoOutAndComeInThroughTheRingsManyTimesRound(_ setting: Int) throws {
        let (mode, interrupt) = Self.settings[setting]
        try withDriver(mode, interrupt) { (driver, model, received, _) throws in
            model.loopback = true
            let frames = (0..<100).map { index in [UInt8](repeating: UInt8(index), count: 60 + index * 10) }
            for frame in frames { try driver.send(frame) }
            let got = received.wait(for: 100 - model.droppedFrames)
            for _ in 0..<10_000 where model.transmitted.count < 100 { usleep(1000) }
            #expect(model.transmitted == frames, "every frame sent once, in order")
            #expect(got.count + model.droppedFrames == 100)
            #expect(got == frames.filter { got.contains($0) }, "received in order, uncorrupted")
            #expect(driver.statistics.framesSent == 100)
            #expect(throws: E1000Driver.Failure.self) { try driver.send([1, 2, 3]) }
        }
    }

    @Test(arguments: ExecutionMode.allCases)
    func answersARPAndPingWithCorrectChecksums(_ mode: ExecutionMode) throws {
        try withDriver(mode, .intx) { (driver, model, _, runtime) throws in
            let responder = EchoResponder(mac: driver.macAddress, ip: [169, 254, 77, 2], runtime: runtime) { try driver.send($0) }
            driver.onFrame = { responder.handle($0) }
            let peerMAC: [UInt8] = [2, 0, 0, 0, 0, 1], peerIP: [UInt8] = [169, 254, 77, 1]
            model.receive([UInt8](repeating: 0xFF, count: 6) + peerMAC + [0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]
                          + peerMAC + peerIP + [0, 0, 0, 0, 0, 0] + [169, 254, 77, 2])
            var echo = driver.macAddress + peerMAC + [0x08, 0x00, 0x45, 0, 0, 32, 0, 0, 0x40, 0, 64, 1, 0, 0]
                + peerIP + [169, 254, 77, 2] + [8, 0, 0, 0, 0x12, 0x34, 0, 7, 1, 2, 3, 4]
            InternetChecksum.set(&echo, at: 24, over: 14..<34)
            InternetChecksum.set(&echo, at: 36, over: 34..<46)
            model.receive(echo)
            for _ in 0..<10_000 where model.transmitted.count < 2 { usleep(1000) }
            let sent = model.transmitted
            try #require(sent.count == 2)
            #expect(Array(sent[0][20..<22]) == [0, 2], "an ARP reply")
            #expect(Array(sent[0][28..<32]) == [169, 254, 77, 2] && Array(sent[0][32..<38]) == peerMAC)
            let reply = sent[1]
            #expect(Array(reply[0..<6]) == peerMAC && reply[34] == 0, "an echo reply to the sender")
            #expect(Array(reply[26..<30]) == [169, 254, 77, 2] && Array(reply[30..<34]) == peerIP)
            #expect(InternetChecksum.verify(reply, over: 14..<34), "IPv4 header checksum")
            #expect(InternetChecksum.verify(reply, over: 34..<46), "ICMP checksum")
            #expect(responder.answeredARP == 1 && responder.answeredEchoes == 1)
        }
    }

    @Test(arguments: ExecutionMode.allCases)
    func framesArrivingWithNoFreeDescriptorAreDroppedNotCorrupted(_ mode: ExecutionMode) throws {
        try withDriver(mode, .intx) { (driver, model, received, _) throws in
            driver.onFrame = { frame in usleep(2000); received.frames.withLock { $0.append(frame) } }
            for index in 0..<200 { model.receive([UInt8](repeating: UInt8(index), count: 64)) }
            for _ in 0..<10_000 where received.frames.withLock({ $0.count }) + model.droppedFrames < 200 { usleep(1000) }
            let got = received.frames.withLock { $0 }
            #expect(got.count + model.droppedFrames == 200)
            #expect(got.allSatisfy { frame in frame.allSatisfy { $0 == frame[0] } })
        }
    }

    @Test(arguments: ExecutionMode.allCases)
    func aRemovedNICFailsCleanly(_ mode: ExecutionMode) throws {
        let device = try ModeledDevice(E1000Model())
        defer { device.close() }
        device.faults.surpriseRemoved = true
        try withVerifiedRuntime(mode) { runtime in
            #expect(throws: E1000Driver.Failure.self) { _ = try E1000Driver(device: device, runtime: runtime, interrupt: .intx) }
        }
    }

    /// The 82574L (QEMU's e1000e) with its own EEPROM read layout: the same driver finds its
    /// address and moves frames, by INTx and by MSI.
    @Test(arguments: [InterruptKind.intx, .msi])
    func the82574LWorksWithItsOwnEEPROMLayout(_ interrupt: InterruptKind) throws {
        let model = E1000Model(mac: [2, 0, 0, 0x74, 0x74, 0x0C], variant: .i82574L)
        try withDriver(.kernelEmulation, interrupt, model: model) { (driver, model, received, _) throws in
            #expect(driver.variant == .i82574L)
            #expect(driver.macAddress == [2, 0, 0, 0x74, 0x74, 0x0C])
            model.loopback = true
            let frames = (0..<40).map { index in [UInt8](repeating: UInt8(index), count: 60 + index) }
            for frame in frames { try driver.send(frame) }
            #expect(received.wait(for: 40) == frames)
        }
    }
}

/// The Internet checksum, computed by the test independently of the driver.
enum InternetChecksum {
    static func sum(_ bytes: [UInt8], over range: Range<Int>) -> UInt16 {
        var sum: UInt32 = 0
        for index in stride(from: range.lowerBound, to: range.upperBound, by: 2) {
            sum += UInt32(bytes[index]) << 8 | (index + 1 < range.upperBound ? UInt32(bytes[index + 1]) : 0)
        }
        while sum >> 16 != 0 { sum = (sum & 0xFFFF) + (sum >> 16) }
        return UInt16(sum)
    }

    static func set(_ bytes: inout [UInt8], at offset: Int, over range: Range<Int>) {
        bytes[offset] = 0; bytes[offset + 1] = 0
        let checksum = ~sum(bytes, over: range)
        bytes[offset] = UInt8(checksum >> 8); bytes[offset + 1] = UInt8(checksum & 0xFF)
    }

    static func verify(_ bytes: [UInt8], over range: Range<Int>) -> Bool { sum(bytes, over: range) == 0xFFFF }
}

#if canImport(Glibc)
import Glibc
#endif
