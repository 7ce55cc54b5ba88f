import Glibc
import ModelessBus
import ModelessSystem
import Testing

/// `bind --persist`, `unbind --persist` and the boot-time `overrides apply`, with a
/// configuration directory beside the simulated kernel.
@Suite("Persistent overrides")
struct PersistentOverrideTests {
    func overrides(_ kernel: SimulatedPCIKernel) -> OverrideStore { OverrideStore(configDirectory: "\(kernel.root)/etc") }

    @Test func persistedBindingsAreAppliedOnAFreshBoot() throws {
        let kernel = try standardKernel()
        let store = overrides(kernel)
        _ = try kernel.binder.bind(all: [selector("00:03.0"), selector("eth0")], to: .vfioPCI, persist: store)
        #expect(try store.load() == [PCIAddress("0000:00:03.0")!: .init(driver: .vfioPCI),
                                     PCIAddress("0000:00:04.0")!: .init(driver: .vfioPCI)])
        #expect(FileAccess.readTextIfPresent(store.file(for: PCIAddress("0000:00:04.0")!)) == #"{"driver":"vfio-pci","force":false}"#)

        // A reboot: the kernel's drivers have the devices again and /run is empty; /etc is kept.
        let rebooted = try standardKernel()
        try FileAccess.createDirectories(overrides(rebooted).directory)
        for address in try store.load().keys {
            try FileAccess.replaceFile(overrides(rebooted).file(for: address),
                                       with: try FileAccess.readBytes(store.file(for: address)))
        }
        let applied = try rebooted.binder.applyOverrides(overrides(rebooted))
        #expect(applied.map(\.address.description) == ["0000:00:03.0", "0000:00:04.0"])
        #expect(applied.allSatisfy { (try? $0.result.get())?.device.driver == "vfio-pci" })
        #expect(try rebooted.bus.device(at: PCIAddress("0000:00:04.0")!).driver == "vfio-pci")
        #expect(try BindingStore(directory: rebooted.state).record(for: PCIAddress("0000:00:04.0")!)?.originalDriver == "e1000")
        #expect(rebooted.binder.accessMarkers.markedGroups() == [3, 4])
        // Applying again is a no-op.
        let again = try rebooted.binder.applyOverrides(overrides(rebooted))
        #expect(again.allSatisfy { (try? $0.result.get())?.alreadyDone == true })
    }

    /// At boot, each override stands alone: an absent or refused device does not keep the
    /// others from their drivers.
    @Test func oneRefusedOverrideDoesNotStopTheOthers() throws {
        let kernel = try standardKernel()
        let store = overrides(kernel)
        try store.set(.init(driver: .vfioPCI), for: PCIAddress("0000:00:03.0")!)
        try store.set(.init(driver: .vfioPCI), for: PCIAddress("0000:00:05.0")!)  // eth1 is up: refused
        try store.set(.init(driver: .uioPCIGeneric), for: PCIAddress("0000:00:09.0")!)  // absent
        let applied = try kernel.binder.applyOverrides(store)
        let kinds = applied.map { entry -> String in
            switch entry.result {
            case .success(let report): "\(entry.address) \(report.device.driver ?? "-")"
            case .failure(let error): "\(entry.address) \(error.kind)"
            }
        }
        #expect(kinds == ["0000:00:03.0 vfio-pci", "0000:00:05.0 deviceInUse", "0000:00:09.0 noSuchDevice"])
    }

    /// A refused bind persists nothing; nor does a configuration directory that cannot be
    /// written, which is found before anything changes.
    @Test func aRefusedPersistWritesNothing() throws {
        let kernel = try standardKernel()
        let store = overrides(kernel)
        let before = kernel.snapshot()
        let refused = #expect(throws: BatchError.self) {
            try kernel.binder.bind(all: [selector("00:03.0"), selector("eth1")], to: .vfioPCI, persist: store)
        }
        #expect(refused?.failure.kind == .deviceInUse)
        #expect(try store.load().isEmpty)

        // A dry run checks the directory without creating it.
        let dry = try kernel.binder.bind(all: [selector("00:03.0")], to: .vfioPCI, dryRun: true, persist: store)
        #expect(dry.count == 1)
        #expect(!FileAccess.exists(store.configDirectory), "a dry run created \(store.configDirectory)")

        try FileAccess.replaceFile("\(kernel.root)/not-a-directory", with: [])
        let unwritable = OverrideStore(configDirectory: "\(kernel.root)/not-a-directory")
        let error = #expect(throws: BatchError.self) {
            try kernel.binder.bind(all: [selector("00:03.0")], to: .vfioPCI, persist: unwritable)
        }
        #expect(error?.failure.kind == .notPermitted)
        #expect(error?.failure.message.contains("not-a-directory/overrides") == true)
        #expect(kernel.snapshot() == before)
    }

    @Test func unbindPersistGivesBackAndForgets() throws {
        let kernel = try standardKernel()
        let store = overrides(kernel)
        let before = kernel.snapshot()
        _ = try kernel.binder.bind(all: [selector("00:03.0")], to: .uioPCIGeneric, persist: store)
        // An override for a device that is not bound now: only the override goes.
        try store.set(.init(driver: .vfioPCI), for: PCIAddress("0000:00:04.0")!)
        let outcomes = try kernel.binder.unbind(all: [selector("00:03.0"), selector("eth0")], persist: store)
        #expect(outcomes.count == 2)
        if case .overrideRemoved(let address) = outcomes[1].state { #expect(address.description == "0000:00:04.0") } else {
            Issue.record("eth0 should only have lost its override: \(outcomes[1].state)")
        }
        #expect(try store.load().isEmpty)
        #expect(kernel.snapshot() == before)
    }

    @Test(arguments: [
        ("0000:00:1f", #"{"driver":"vfio-pci"}"#, BusError.Kind.invalidOverride, "not named after a full PCI address"),
        ("00:03.0", #"{"driver":"vfio-pci"}"#, .invalidOverride, "not named after a full PCI address"),
        ("0000:00:03.0", #"{"driver":"nvme"}"#, .invalidOverride, "is not a persistent override"),
        ("0000:00:03.0", "{", .invalidOverride, "is not a persistent override"),
    ] as [(String, String, BusError.Kind, String)])
    func anInvalidOverrideBindsNothing(_ name: String, _ text: String, _ kind: BusError.Kind, _ message: String) throws {
        let kernel = try standardKernel()
        let store = overrides(kernel)
        try store.set(.init(driver: .vfioPCI), for: PCIAddress("0000:00:04.0")!)
        try FileAccess.replaceFile("\(store.directory)/\(name)", with: Array(text.utf8))
        let before = kernel.snapshot()
        let error = #expect(throws: BusError.self) { try kernel.binder.applyOverrides(store) }
        #expect(error?.kind == kind)
        #expect(error?.message.contains("\(store.directory)/\(name)") == true)
        #expect(error?.message.contains(message) == true, "\(String(describing: error))")
        #expect(kernel.snapshot() == before)
    }

    @Test func aMissingForceReadsAsFalse() throws {
        let kernel = try standardKernel()
        let store = overrides(kernel)
        try FileAccess.createDirectories(store.directory)
        try FileAccess.replaceFile(store.file(for: PCIAddress("0000:00:03.0")!), with: Array(#"{"driver": "uio_pci_generic"}"#.utf8))
        #expect(try store.override(for: PCIAddress("0000:00:03.0")!) == .init(driver: .uioPCIGeneric, force: false))
    }
}
