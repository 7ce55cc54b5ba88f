import ModelessBus
import ModelessSystem
import Testing

/// `overrides apply --device`, which the udev rule runs when a PCI function is added: a
/// re-plugged function with a persistent override goes back to its user-mode driver with every
/// check of `bind`, and any other function is left as it is.
@Suite("Persistent overrides on a re-plug")
struct ReplugOverrideTests {
    func overrides(_ kernel: SimulatedPCIKernel) -> OverrideStore { OverrideStore(configDirectory: "\(kernel.root)/etc") }

    @Test func onlyTheAddedFunctionsOverrideIsApplied() throws {
        let kernel = try standardKernel()
        let store = overrides(kernel)
        try store.set(.init(driver: .vfioPCI), for: PCIAddress("0000:00:04.0")!)
        try store.set(.init(driver: .uioPCIGeneric), for: PCIAddress("0000:00:03.0")!)
        let before = kernel.snapshot()

        // A function without an override: nothing is done.
        #expect(try kernel.binder.applyOverride(ofAdded: PCIAddress("0000:00:05.0")!, store) == nil)
        #expect(kernel.snapshot() == before)

        // The added function is bound; the other override waits for its own device.
        let applied = try #require(try kernel.binder.applyOverride(ofAdded: PCIAddress("0000:00:04.0")!, store))
        #expect(applied.override == .init(driver: .vfioPCI))
        #expect((try? applied.result.get())?.device.driver == "vfio-pci")
        #expect(try kernel.bus.device(at: PCIAddress("0000:00:04.0")!).driver == "vfio-pci")
        #expect(try kernel.bus.device(at: PCIAddress("0000:00:03.0")!).driver == nil)
        #expect(try BindingStore(directory: kernel.state).record(for: PCIAddress("0000:00:04.0")!)?.originalDriver == "e1000")
        #expect(kernel.binder.accessMarkers.markedGroups() == [4])

        // An add event seen twice (udevadm trigger) changes nothing more.
        let again = try #require(try kernel.binder.applyOverride(ofAdded: PCIAddress("0000:00:04.0")!, store))
        #expect((try? again.result.get())?.alreadyDone == true)
    }

    /// The checks of `bind` still apply: an override of a function the kernel uses (eth1 is up)
    /// is refused and changes nothing.
    @Test func aRefusedBindChangesNothing() throws {
        let kernel = try standardKernel()
        let store = overrides(kernel)
        try store.set(.init(driver: .vfioPCI), for: PCIAddress("0000:00:05.0")!)
        let before = kernel.snapshot()
        let started = monotonicNanoseconds()
        let applied = try #require(try kernel.binder.applyOverride(ofAdded: PCIAddress("0000:00:05.0")!, store,
                                                                   settleNanoseconds: 300_000_000))
        // Tried again until the settle time is over (the kernel may not let drivers match yet).
        #expect(monotonicNanoseconds() - started >= 300_000_000)
        guard case .failure(let error) = applied.result else {
            Issue.record("eth1 is up, yet its override was applied: \(applied.result)")
            return
        }
        #expect(error.kind == .deviceInUse)
        #expect(kernel.snapshot() == before)
    }

    /// An override file that cannot be used binds nothing, and is named.
    @Test func anInvalidStoreBindsNothing() throws {
        let kernel = try standardKernel()
        let store = overrides(kernel)
        try store.set(.init(driver: .vfioPCI), for: PCIAddress("0000:00:04.0")!)
        try FileAccess.replaceFile(store.file(for: PCIAddress("0000:00:03.0")!), with: Array(#"{"driver":"nvme"}"#.utf8))
        let before = kernel.snapshot()
        let error = #expect(throws: BusError.self) {
            try kernel.binder.applyOverride(ofAdded: PCIAddress("0000:00:04.0")!, store)
        }
        #expect(error?.kind == .invalidOverride)
        #expect(error?.message.contains("\(store.directory)/0000:00:03.0") == true)
        #expect(kernel.snapshot() == before)
    }
}
