import Glibc
import ModelessBus
import ModelessDrivers
import ModelessRuntime
import ModelessDevice
import ModelessSystem
import Testing

extension VM {
    /// User-mode access to QEMU's edu device through both backends.
    @Suite("edu over VFIO and UIO")
    struct EduDeviceTests {
        /// Binds edu to `driver`, runs `body` with it opened, closes and restores it.
        func withEdu(_ driver: UserModeDriver, allowUnisolatedDMA: Bool = false,
                     _ body: (any DeviceAccess) throws -> Void) throws {
            let edu = try TestBench.edu()
            let binder = PCIBinder()
            _ = try binder.bind(.address(edu), to: driver)
            defer { _ = try? binder.unbind(.address(edu)) }
            let device = try DeviceOpener.open(edu, options: .init(dmaAddressBits: Edu.dmaAddressBits,
                                                                   allowUnisolatedDMA: allowUnisolatedDMA))
            defer { device.close() }
            try body(device)
        }

        /// Waits up to `seconds` for the vector to fire; false on timeout.
        func fired(_ vector: InterruptVector, within seconds: Int32 = 10) throws -> Bool {
            var descriptor = pollfd(fd: vector.fd, events: Int16(POLLIN), revents: 0)
            guard poll(&descriptor, 1, seconds * 1000) == 1 else { return false }
            return try vector.wait() >= 1
        }

        func waitWhile(_ condition: () throws -> Bool) throws {
            for _ in 0..<10_000 where try condition() { usleep(1000) }
            #expect(try !condition(), "device stayed busy")
        }

        @Test(arguments: [UserModeDriver.vfioPCI, .uioPCIGeneric])
        func registers(_ driver: UserModeDriver) throws {
            try withEdu(driver) { device in
                let bar = try device.region(0)
                #expect(bar.size == 1 << 20)
                #expect(try bar.read32(at: Edu.identification) == 0x0100_00ed)
                try bar.write32(0x1234_5678, at: Edu.liveness)
                #expect(try bar.read32(at: Edu.liveness) == ~0x1234_5678)
                try bar.write32(10, at: Edu.factorial)
                try waitWhile { try bar.read32(at: Edu.status) & 1 != 0 }
                #expect(try bar.read32(at: Edu.factorial) == 3_628_800)
                #expect(try device.config.snapshot().vendorID == 0x1234)
                #expect(try device.config.snapshot().interrupts.msi?.vectors == 1)
                // Out of range and misaligned accesses are errors, not stray accesses.
                #expect(throws: DeviceError.self) { try bar.read32(at: 1 << 20) }
                #expect(throws: DeviceError.self) { try bar.read32(at: -4) }
                #expect(throws: DeviceError.self) { try bar.read32(at: 2) }
                #expect(throws: DeviceError.self) { try device.region(1) }
                #expect(throws: DeviceError.self) { try device.config.read32(at: device.config.size) }
            }
        }

        @Test(arguments: [(UserModeDriver.vfioPCI, InterruptKind.msi), (.vfioPCI, .intx), (.uioPCIGeneric, .intx)])
        func interrupts(_ driver: UserModeDriver, _ kind: InterruptKind) throws {
            try withEdu(driver) { device in
                let bar = try device.region(0)
                try device.config.setBusMastering(true)  // MSI is a memory write by the device
                let vector = try #require(try device.enableInterrupts(kind, count: 1).first)
                for round in 1...3 {
                    try bar.write32(UInt32(round), at: Edu.raiseInterrupt)
                    #expect(try fired(vector), "\(kind) round \(round) never arrived")
                    #expect(try bar.read32(at: Edu.interruptStatus) == UInt32(round))
                    try bar.write32(UInt32(round), at: Edu.acknowledgeInterrupt)
                    try vector.acknowledge()
                }
                if vector.canTrigger {
                    try vector.trigger()
                    #expect(try fired(vector), "loopback trigger never arrived")
                }
                try device.disableInterrupts()
            }
        }

        @Test func dmaRoundTripThroughTheIOMMU() throws {
            try withEdu(.vfioPCI) { device in
                let bar = try device.region(0)
                try device.config.setBusMastering(true)
                let source = try device.allocateDMA(size: 4096)
                let destination = try device.allocateDMA(size: 4096)
                #expect(source.deviceAddress < 1 << 28 && destination.deviceAddress < 1 << 28)
                var generator = SystemRandomNumberGenerator()
                // QEMU 7.2's edu aborts on a transfer that ends exactly at its 4 KiB buffer's end
                // (its range check is off by one), so move 2 KiB.
                let length = 2048
                let pattern = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
                try source.write(pattern)
                try destination.fill(0)

                func transfer(from: UInt64, to: UInt64, toRAM: Bool) throws {
                    try bar.write64(from, at: Edu.dmaSource)
                    try bar.write64(to, at: Edu.dmaDestination)
                    try bar.write64(UInt64(length), at: Edu.dmaCount)
                    try bar.write64(toRAM ? 0b011 : 0b001, at: Edu.dmaCommand)
                    try waitWhile { try bar.read64(at: Edu.dmaCommand) & 1 != 0 }
                }
                try transfer(from: source.deviceAddress, to: Edu.dmaBuffer, toRAM: false)
                try transfer(from: Edu.dmaBuffer, to: destination.deviceAddress, toRAM: true)
                #expect(try destination.read(length) == pattern)
                #expect(try destination.read(4096 - length, at: length) == [UInt8](repeating: 0, count: 4096 - length))
                source.free()
                #expect(throws: DeviceError.self) { try source.load8(at: 0) }
            }
        }

        @Test func dmaOverUIONeedsAnOptIn() throws {
            try withEdu(.uioPCIGeneric) { device in
                let error = #expect(throws: DeviceError.self) { try device.allocateDMA(size: 4096) }
                #expect(error?.kind == .unisolatedDMANotAllowed)
            }
            try withEdu(.uioPCIGeneric, allowUnisolatedDMA: true) { device in
                let buffer = try device.allocateDMA(size: 4096)
                #expect(buffer.deviceAddress != 0)
            }
        }

        /// QEMU's ICH9 AHCI controller (00:1f.2) has an index/data pair in I/O-port BAR4
        /// (index at 0x10, data at 0x14) onto its memory BAR5: a register read through the ports
        /// matches the same register read through memory.
        @Test func ioPortBARThroughVFIO() throws {
            _ = try TestBench.shell("rmmod i2c_i801")  // Its group (00:1f.x) must have no host driver.
            let ahci = try #require(PCIAddress("0000:00:1f.2"))
            let binder = PCIBinder()
            _ = try binder.bind(.address(ahci), to: .vfioPCI)
            defer { _ = try? binder.unbind(.address(ahci)) }
            let device = try DeviceOpener.open(ahci)
            defer { device.close() }
            let ports = try device.region(4)
            let memory = try device.region(5)
            #expect(!ports.isMemoryMapped && memory.isMemoryMapped)
            try device.config.setCommand([.ioSpace, .memorySpace], true)
            for register in [0x00, 0x04, 0x0C, 0x10] {  // CAP, GHC, PI, VS
                try ports.write32(UInt32(register), at: 0x10)
                #expect(try ports.read32(at: 0x10) == UInt32(register))
                let throughPorts = try ports.read32(at: 0x14)
                let throughMemory = try memory.read32(at: register)
                #expect(throughPorts == throughMemory, "AHCI register 0x\(String(register, radix: 16))")
            }
            #expect(try memory.read32(at: 0x10) == 0x0001_0000, "AHCI version 1.0")
        }

        /// Opening and closing 100 times, with interrupts and DMA each time, leaves the number
        /// of descriptors and mappings as it was.
        ///
        /// Other suites run in this process at the same time and open files and map memory of
        /// their own, so the device's own files (its nodes, its sysfs files, VFIO's descriptors)
        /// are counted exactly, and the process's totals only have to stay well below one leak per
        /// cycle.
        @Test(arguments: [UserModeDriver.vfioPCI, .uioPCIGeneric])
        func openCloseDoesNotLeak(_ driver: UserModeDriver) throws {
            let edu = try TestBench.edu()
            let binder = PCIBinder()
            _ = try binder.bind(.address(edu), to: driver)
            defer { _ = try? binder.unbind(.address(edu)) }
            func cycle() throws {
                let device = try DeviceOpener.open(edu, options: .init(dmaAddressBits: Edu.dmaAddressBits, allowUnisolatedDMA: true))
                _ = try device.region(0).read32(at: Edu.identification)
                _ = try device.enableInterrupts(driver == .vfioPCI ? .msi : .intx, count: 1)
                _ = try device.allocateDMA(size: 8192)
                device.close()
            }
            let bus = PCIBus()
            let node = try #require(bus.userModeNode(of: try bus.device(at: edu)))
            let sysfsName = "/\(edu.description)/"  // its config, resource and uio files
            func census() throws -> (ownFiles: Int, ownMappings: Int, files: Int, mappings: Int) {
                let files = try FileAccess.listDirectory("/proc/self/fd").map { (try? FileAccess.readLink("/proc/self/fd/\($0)")) ?? "" }
                let mappings = try FileAccess.readText("/proc/self/maps").split(separator: "\n")
                func own(_ line: some StringProtocol) -> Bool { line.hasSuffix(node) || line.contains(sysfsName) }
                return (files.count(where: own), mappings.count(where: own), files.count, mappings.count)
            }
            let cycles = 100
            try cycle()  // Warm up lazily created process state.
            let before = try census()
            for _ in 0..<cycles { try cycle() }
            let after = try census()
            #expect(after.ownFiles == before.ownFiles, "the device's own descriptors")
            #expect(after.ownMappings == before.ownMappings, "the device's own mappings")
            #expect(after.files - before.files < cycles / 2, "descriptors: \(before.files) before, \(after.files) after")
            #expect(after.mappings - before.mappings < cycles / 2, "mappings: \(before.mappings) before, \(after.mappings) after")
        }
    }
}

extension VM {
    /// MSI-X and function reset, which edu lacks, on QEMU's NVMe controller.
    @Suite("NVMe over VFIO: MSI-X and reset")
    struct NVMeDeviceTests {
        /// Binds the NVMe controller to vfio-pci, runs `body` with it opened, then restores it.
        func withNVMe(_ body: (any DeviceAccess) throws -> Void) throws {
            let nvme = try TestBench.nvme()
            let binder = PCIBinder()
            _ = try binder.bind(.address(nvme), to: .vfioPCI, force: true)
            defer { _ = try? binder.unbind(.address(nvme)) }
            let device = try DeviceOpener.open(nvme)
            defer { device.close() }
            try body(device)
        }

        @Test func msixVectorsEachArriveOnTheirOwnEventfd() throws {
          try withNVMe { device in
            let offered = device.vectorCount(.msix)
            #expect(offered >= 4, "QEMU's NVMe offers MSI-X vectors")
            #expect(try device.config.snapshot().interrupts.msix?.vectors == offered)
            let vectors = try device.enableInterrupts(.msix, count: 4)
            for vector in vectors.reversed() {
                try vector.trigger()
                var descriptors = vectors.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
                #expect(poll(&descriptors, nfds_t(descriptors.count), 5000) == 1, "exactly one vector is readable")
                #expect(descriptors[vector.index].revents & Int16(POLLIN) != 0, "vector \(vector.index) fired")
                #expect(try vector.wait() == 1)
            }
            try device.disableInterrupts()
          }
        }

        @Test func resetLeavesTheControllerReadable() throws {
          try withNVMe { device in
            let version = try device.region(0).read32(at: 0x08)  // NVMe VS register
            #expect(version >= 0x0001_0200)
            guard let vfio = device as? VFIODevice else { Issue.record("expected VFIO"); return }
            if vfio.supportsReset {
                try device.reset()
                #expect(try device.region(0).read32(at: 0x08) == version)
            } else {
                let error = #expect(throws: DeviceError.self) { try device.reset() }
                #expect(error?.kind == .unsupported)
            }
          }
        }
    }
}

extension VM {
    /// The edu sample driver on QEMU's edu: the same results as on the model, in both modes.
    @Suite("edu driver on the real device")
    struct EduDriverIntegrationTests {
        static let expected = EduReport(
            identification: 0x0100_00ed, alive: true,
            factorials: [0: 1, 1: 1, 5: 120, 10: 3_628_800, 12: 479_001_600, 13: 1_932_053_504],
            interruptsRaised: 3, dmaBytes: 2048, dmaMatches: true)

        @Test(arguments: [(UserModeDriver.vfioPCI, InterruptKind.msi), (.vfioPCI, .intx), (.uioPCIGeneric, .intx)],
              ExecutionMode.allCases)
        func sameResultsAsOnTheModel(_ binding: (UserModeDriver, InterruptKind), _ mode: ExecutionMode) throws {
            let (driver, kind) = binding
            let edu = try TestBench.edu()
            let binder = PCIBinder()
            _ = try binder.bind(.address(edu), to: driver)
            defer { _ = try? binder.unbind(.address(edu)) }
            let device = try DeviceOpener.open(edu, options: .init(dmaAddressBits: 28, allowUnisolatedDMA: true))
            defer { device.close() }
            let verifier = DriverVerifier()
            let runtime = try makeRuntime(mode, options: RuntimeOptions(verifier: verifier))
            defer { runtime.shutdown() }
            let eduDriver = try EduDriver(device: device, runtime: runtime, interrupt: kind)
            defer { eduDriver.stop() }
            #expect(try eduDriver.selfTest() == Self.expected)
            #expect(eduDriver.interruptCounts.interrupts == 11)
            #expect(verifier.reports.isEmpty, "\(verifier.reports)")
            #expect(runtime.refusals.isEmpty, "root in the guest gets SCHED_FIFO and pinning: \(runtime.refusals)")
        }
    }
}

extension VM {
    /// A driver killed at any point (mid-DMA, with an interrupt pending, during start) leaves
    /// the device for the next run, which must pass all the same: `modeless run edu` is killed
    /// with SIGKILL `MODELESS_EDU_KILLS` times per backend (default 6: 1.5 to 2.5 minutes in all in the emulated guest), each kill followed by a
    /// full run that must report the DMA round trip identical.
    @Suite("edu driver killed and run again")
    struct EduKillTests {
        static var kills: Int {
            getenv("MODELESS_EDU_KILLS").flatMap { Int(String(cString: $0)) } ?? 6
        }

        @Test(arguments: [(UserModeDriver.vfioPCI, InterruptKind.msi), (.vfioPCI, .intx), (.uioPCIGeneric, .intx)])
        func theNextRunPassesAfterEveryKill(_ binding: (UserModeDriver, InterruptKind)) throws {
            let (driver, kind) = binding
            let edu = try TestBench.edu()
            let binder = PCIBinder()
            _ = try binder.bind(.address(edu), to: driver)
            defer { _ = try? binder.unbind(.address(edu)) }
            let modeless = try ProgramRunner.builtProgram("modeless")
            func arguments(_ round: Int) -> [String] {
                ["run", "edu", edu.description, "--irq", kind.rawValue,
                 "--mode", round % 2 == 0 ? "user" : "kernel-emulation"]
                    + (driver == .uioPCIGeneric ? ["--allow-unisolated-dma"] : [])
            }
            var failedRuns = 0
            /// Runs to the end; returns how long it took after its first line, in nanoseconds.
            func fullRun(_ round: Int, after what: String) throws -> UInt64 {
                let child = try ChildProcess(modeless, arguments(round))
                var lines: [String] = []
                let first = child.readLine(timeout: 60)
                let started = monotonicNanoseconds()
                lines += first.map { [$0] } ?? []
                while let line = child.readLine(timeout: 60) { lines.append(line) }
                let status = try child.wait()
                let output = lines.joined(separator: "\n")
                let passed = status == 0 && output.contains("identical")
                if !passed { failedRuns += 1 }
                #expect(passed, "\(driver) \(kind) run after \(what): exit \(status)\n\(output)")
                // VFIO counts this run's interrupts; UIO's counter runs from the bind, so a
                // new process's first read counts its predecessors' interrupts too.
                if driver == .vfioPCI {
                    #expect(output.contains("for 11 interrupts"), "only this run's own interrupts, after \(what):\n\(output)")
                }
                return monotonicNanoseconds() - started
            }
            // Kill points are drawn within the shortest full run so far (the first, with cold
            // caches, is the longest).
            var runTime = try fullRun(0, after: "nothing")
            var generator = SystemRandomNumberGenerator()
            // A kill drawn after the run had already ended kills nothing: another is drawn, up to
            // twice the count in all, so that the kills that land are `kills` under any load.
            var killedMidRun = 0, round = 0
            while killedMidRun < Self.kills && round < 2 * Self.kills {
                round += 1
                let child = try ChildProcess(modeless, arguments(round))
                _ = child.readLine(timeout: 60)  // the driver starts after this line
                // A third anywhere in the run, a third in its first half (factorials and raised
                // interrupts), a third in its last part (the DMA round trip, 2 × 100 ms).
                let span: ClosedRange<Double> = switch round % 3 {
                case 0: 0...1
                case 1: 0...0.5
                default: 0.55...1
                }
                let delay = UInt64(Double(runTime) * Double.random(in: span, using: &generator))
                usleep(UInt32(delay / 1000))
                let endedFirst = child.exitStatusIfEnded() != nil
                child.signal(SIGKILL)
                let status = try child.wait()
                if !endedFirst && status == 128 + SIGKILL { killedMidRun += 1 }
                while child.readLine(timeout: 1) != nil {}
                runTime = min(runTime, try fullRun(round + 1, after: "a kill \(delay / 1_000_000) ms into run \(round)"))
            }
            print("edu kill test, \(driver) \(kind): \(killedMidRun) kills mid-run in \(round) tries, \(round + 1 - failedRuns) of \(round + 1) full runs passed; the shortest run took \(runTime / 1_000_000) ms")
            #expect(killedMidRun >= Self.kills / 2, "most kills landed while the driver ran")
        }
    }
}
