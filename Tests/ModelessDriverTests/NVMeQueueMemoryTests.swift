import ModelessDevice
import ModelessDrivers
import ModelessModels
import ModelessRuntime
import Testing

/// The NVMe driver's queue memory made ahead of its start (a warm standby's): used as it is
/// when it fits the start, freed and replaced when it does not, released on every path.
@Suite("The NVMe driver's queue memory made ahead")
struct NVMeQueueMemoryTests {
    @Test(arguments: ExecutionMode.allCases)
    func memoryMadeAheadIsWhatTheControllerRunsOn(_ mode: ExecutionMode) throws {
        let device = try ModeledDevice(NVMeModel())
        defer { device.close() }
        let verifier = DriverVerifier()
        let runtime = try makeRuntime(mode, options: RuntimeOptions(verifier: verifier))
        defer { runtime.shutdown() }
        let memory = try NVMeQueueMemory(device: device, runtime: runtime, completion: .msix)
        let ahead = device.liveDMABufferCount
        #expect(ahead > 0)
        let controller = try NVMeController(device: device, runtime: runtime, completion: .msix, memory: memory)
        #expect(device.liveDMABufferCount == ahead, "the start mapped nothing more")
        #expect(controller.startSteps.contains("queue memory (made ahead)"), "\(controller.startSteps)")
        let data = (0..<512).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        try controller.write(lba: 3, data)
        #expect(try controller.read(lba: 3, blocks: 1) == data)
        memory.free()  // taken: nothing to free, the controller owns it
        #expect(device.liveDMABufferCount == ahead)
        controller.stop()
        #expect(device.liveDMABufferCount == 0)
        #expect(verifier.reports.isEmpty, "\(verifier.reports)")
    }

    @Test func memoryMadeForAnotherStartIsFreedAndReplaced() throws {
        let device = try ModeledDevice(NVMeModel())
        defer { device.close() }
        let runtime = try makeRuntime(.user)
        defer { runtime.shutdown() }
        let memory = try NVMeQueueMemory(device: device, runtime: runtime, completion: .msix)
        let controller = try NVMeController(device: device, runtime: runtime, completion: .intx, memory: memory)
        #expect(!controller.startSteps.contains("made ahead"), "\(controller.startSteps)")
        #expect(try controller.read(lba: 0, blocks: 1).count == 512)
        controller.stop()
        #expect(device.liveDMABufferCount == 0, "the unused memory was freed")
    }

    @Test func memoryIsFreedWhenTheStartIsRefusedOrItIsNotUsed() throws {
        let device = try ModeledDevice(NVMeModel())
        defer { device.close() }
        let runtime = try makeRuntime(.user)
        defer { runtime.shutdown() }
        let refused = try NVMeQueueMemory(device: device, runtime: runtime, completion: .msix)
        #expect(throws: NVMeController.Failure.self) {
            _ = try NVMeController(device: device, runtime: runtime, completion: .msix, ioQueueLimit: 99, memory: refused)
        }
        #expect(device.liveDMABufferCount == 0)
        let unused = try NVMeQueueMemory(device: device, runtime: runtime, completion: .msix)
        unused.free()
        unused.free()
        #expect(device.liveDMABufferCount == 0)
    }

    @Test func aDeviceThatIsNotNVMeGetsNoMemory() throws {
        let device = try ModeledDevice(E1000Model())
        defer { device.close() }
        let runtime = try makeRuntime(.user)
        defer { runtime.shutdown() }
        #expect(throws: NVMeController.Failure.self) { _ = try NVMeQueueMemory(device: device, runtime: runtime, completion: .msix) }
        #expect(device.liveDMABufferCount == 0)
    }
}
