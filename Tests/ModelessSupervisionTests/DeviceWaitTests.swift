import ModelessLogical
import ModelessSystem
import Synchronization
import Testing
@testable import ModelessSupervision

#if canImport(Glibc)
import Glibc
#endif

/// An instance whose device is gone is not restarted until the device is back
/// (``Supervisor/deviceAvailability``), and the wait counts against no restart limit.
@Suite("Supervision: instances whose device is gone", .serialized)
struct DeviceWaitTests {
    let root = temporaryDirectory()
    var containers: ContainerDirectory { ContainerDirectory(path: root + "/c") }

    @Test func anInstanceWhoseDeviceIsGoneWaitsForItAndResumesWhenItReturns() throws {
        let configuration = SupervisorConfiguration(
            service: "svc", command: [try modelessPath(), "serve", "memory-disk", "--device", "disk"],
            stateDirectory: root + "/state", startAttempts: 1, startLimitBurst: 1, startLimitIntervalSeconds: 60)
        let supervisor = try Supervisor(configuration, containers: containers)
        let absence = Mutex<String?>(nil)
        supervisor.deviceAvailability = { absence.withLock { $0 } }
        try supervisor.start()
        defer { supervisor.stop() }
        #expect(supervisor.waitUntilServing(seconds: 30))

        absence.withLock { $0 = "0000:01:00.0 is not on the bus" }
        let victim = try #require(supervisor.instances[0].processID)
        kill(victim, SIGTERM)
        #expect(eventually { supervisor.instances[0].phase == .waitingForDevice })
        usleep(1_500_000)  // Several device polls: still waiting, nothing started.
        #expect(supervisor.instances[0].phase == .waitingForDevice)
        #expect(supervisor.instances[0].processID == nil)
        #expect(supervisor.instances[0].restarts == 0)
        #expect(try SupervisorStatus.read(stateDirectory: root + "/state").instances[0].phase == .waitingForDevice)

        absence.withLock { $0 = nil }
        #expect(eventually { supervisor.instances[0].phase == .serving })
        #expect(supervisor.instances[0].restarts == 1)
        // A start limit of one start per minute would have refused a plain restart: the wait did not count.
        let log = try FileAccess.readText(root + "/state/supervisor.log")
        #expect(log.contains("with its device gone (0000:01:00.0 is not on the bus); waiting for the device to return"), "\(log)")
        #expect(log.contains("its device is back: starting it"), "\(log)")
        let consumer = try LogicalContainer(name: "reader", directory: containers, serving: false)
        try consumer.close(try consumer.open("svc-0/disk"))
    }
}
