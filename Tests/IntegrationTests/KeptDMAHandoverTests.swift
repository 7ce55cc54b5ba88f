import Glibc
import ModelessBus
import ModelessDevice
import ModelessSystem
import Testing

extension VM {
    /// DMA memory a VFIO device keeps across a handover (`allocateKeptDMA`, `inheritKeptDMA`),
    /// on the real edu device: a holder process allocates kept memory, writes a pattern and
    /// hands the device over; this process adopts it ahead, inherits the kept memory, the
    /// holder is SIGKILLed, and the device, still bus master, reads the pattern through the
    /// dead holder's IOMMU mapping (and writes where this process reads).
    @Suite("kept DMA across a VFIO handover")
    struct KeptDMAHandoverTests {
        /// What the holder writes into its kept memory.
        static let pattern: [UInt8] = (0..<2048).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        /// The environment variable naming the holder's handover socket: set only for the holder.
        static let holderVariable = "MODELESS_KEPT_DMA_HOLDER"
        /// Where QEMU 7.2's edu aborts on a transfer ending exactly at its buffer's end: move 2 KiB.
        static let length = 2048

        /// Copies `length` bytes by edu's DMA engine, from RAM to its buffer or back.
        static func transfer(_ bar: MMIORegion, from: UInt64, to: UInt64, toRAM: Bool) throws {
            try bar.write64(from, at: Edu.dmaSource)
            try bar.write64(to, at: Edu.dmaDestination)
            try bar.write64(UInt64(length), at: Edu.dmaCount)
            try bar.write64(toRAM ? 0b011 : 0b001, at: Edu.dmaCommand)
            for _ in 0..<10_000 where try bar.read64(at: Edu.dmaCommand) & 1 != 0 { usleep(1000) }
            #expect(try bar.read64(at: Edu.dmaCommand) & 1 == 0, "edu's DMA never finished")
        }

        @Test func aSuccessorInheritsKeptMemoryTheDeviceStillReaches() throws {
            let edu = try TestBench.edu()
            let binder = PCIBinder()
            _ = try binder.bind(.address(edu), to: .vfioPCI)
            defer { _ = try? binder.unbind(.address(edu)) }
            let group = try #require(try TestBench.bus.device(at: edu).iommuGroup)
            let path = "/tmp/modeless-kept-dma-\(getpid())"
            let holder = try ChildProcess(try FileAccess.readLink("/proc/self/exe"),
                                          ["--testing-library", "swift-testing", "--filter", "KeptDMAHolderProcess"],
                                          environment: [Self.holderVariable: path], containment: .init())
            defer {
                holder.signal(SIGKILL)
                _ = try? holder.wait()
            }
            var ready: String?
            while ready == nil, let line = holder.readLine(timeout: 300) {
                if line.hasPrefix("kept DMA holder ready at 0x") { ready = line }
            }
            let address = try #require(ready.flatMap { UInt64($0.dropFirst("kept DMA holder ready at 0x".count), radix: 16) },
                                       "the holder never got ready")

            let handed = try VFIOHandover.receive(from: path, address: edu, group: group)
            #expect(handed.kept?.deviceAddress == address && handed.kept?.size == 8192)
            VFIOHandover.offer(handed)
            let device = try #require(VFIODevice.adoptAhead(edu, options: .init(dmaAddressBits: Edu.dmaAddressBits)),
                                      "\(VFIOHandover.refusal(for: edu) ?? "nothing offered")")
            defer { device.close() }
            #expect(device.keptRegion.lowerBound == address)
            let kept = try #require(try device.inheritKeptDMA(), "the holder's kept memory")
            #expect(kept.deviceAddress == address)
            #expect(try kept.read(Self.length) == Self.pattern, "mapped ahead, while the holder runs")

            holder.signal(SIGKILL)
            #expect(try holder.wait() == 128 + SIGKILL)
            try device.takeOver(keepingBusMastering: true)
            #expect(try device.config.command().contains(.busMaster), "the device goes on as the holder left it")

            // The device reads the pattern through the dead holder's mapping of the kept memory.
            let bar = try device.region(0)
            let scratch = try device.allocateDMA(size: 4096)
            try scratch.fill(0)
            try Self.transfer(bar, from: kept.deviceAddress, to: Edu.dmaBuffer, toRAM: false)
            try Self.transfer(bar, from: Edu.dmaBuffer, to: scratch.deviceAddress, toRAM: true)
            #expect(try scratch.read(Self.length) == Self.pattern)
            // And what it writes there is what this process reads.
            let reversed = Array(Self.pattern.reversed())
            try scratch.write(reversed)
            try Self.transfer(bar, from: scratch.deviceAddress, to: Edu.dmaBuffer, toRAM: false)
            try Self.transfer(bar, from: Edu.dmaBuffer, to: kept.deviceAddress + 4096, toRAM: true)
            #expect(try kept.read(Self.length, at: 4096) == reversed)

            // Freed, it leaves the kept region to a new kept buffer.
            kept.free()
            let fresh = try device.allocateKeptDMA(size: 4096)
            #expect(fresh.deviceAddress == address)
            try fresh.write(reversed)
            try Self.transfer(bar, from: fresh.deviceAddress, to: Edu.dmaBuffer, toRAM: false)
            try scratch.fill(0)
            try Self.transfer(bar, from: Edu.dmaBuffer, to: scratch.deviceAddress, toRAM: true)
            #expect(try scratch.read(Self.length) == reversed, "the new kept buffer is what the device reaches there")
        }
    }

    /// The holder of ``KeptDMAHandoverTests``, started by it as a child process (this test
    /// binary, filtered to this suite, with the socket's path in its environment); does
    /// nothing in any other run.
    @Suite("kept DMA holder (a child process of the kept DMA test)")
    struct KeptDMAHolderProcess {
        @Test(.enabled(if: getenv(KeptDMAHandoverTests.holderVariable) != nil))
        func holdKeptMemoryUntilKilled() throws {
            let path = String(cString: getenv(KeptDMAHandoverTests.holderVariable)!)
            let device = try VFIODevice(try TestBench.edu(), options: .init(dmaAddressBits: Edu.dmaAddressBits))
            let kept = try device.allocateKeptDMA(size: 8192)
            try kept.write(KeptDMAHandoverTests.pattern)
            try device.config.setBusMastering(true)
            let server = try VFIOHandoverServer(device: device, path: path)
            print("kept DMA holder ready at 0x\(String(kept.deviceAddress, radix: 16))")
            fflush(nil)
            withExtendedLifetime((device, kept, server)) {
                for _ in 0..<600 { sleep(1) }  // killed long before
            }
        }
    }
}
