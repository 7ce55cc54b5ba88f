import Glibc
import ModelessBus
import ModelessSystem
import Synchronization
import Testing

/// `DevicePresence` with a rebinding, against the simulated kernel: a function that leaves the
/// bus and comes back on its kernel driver is bound again by its persistent override, once per
/// return; one only unbound, or without an override, is left alone.
@Suite("Device presence and re-plug")
struct DevicePresenceTests {
    let address = PCIAddress("0000:00:04.0")!

    /// The simulated kernel, the override store beside it, and what the rebinding reported.
    /// What the rebinding reported.
    final class Reports: Sendable {
        let lines = Mutex<[String]>([])
        var all: [String] { lines.withLock { $0 } }
    }

    func presence(_ kernel: SimulatedPCIKernel, reports: Reports,
                  settleNanoseconds: UInt64 = 5_000_000_000) -> (DevicePresence, OverrideStore) {
        let store = OverrideStore(configDirectory: "\(kernel.root)/etc")
        let rebinding = DevicePresence.Rebinding(overrides: store, binder: kernel.binder,
                                                 settleNanoseconds: settleNanoseconds) { line in
            reports.lines.withLock { $0.append(line) }
        }
        return (DevicePresence(address, bus: kernel.bus, rebinding: rebinding), store)
    }

    /// Takes the function off the bus, as a hot-unplug does.
    func unplug(_ kernel: SimulatedPCIKernel) {
        let directory = kernel.bus.path(of: address)
        #expect(rename(directory, directory + ".unplugged") == 0)
    }

    /// Puts it back as a re-plug does: a fresh function, without an override, probed by its kernel driver.
    func replug(_ kernel: SimulatedPCIKernel) throws {
        let directory = kernel.bus.path(of: address)
        #expect(rename(directory + ".unplugged", directory) == 0)
        unlink("\(directory)/driver")
        try FileAccess.replaceFile("\(directory)/driver_override", with: Array("(null)\n".utf8))
        symlink("../../drivers/e1000", "\(directory)/driver")
    }

    @Test func aRepluggedFunctionIsBoundByItsOverride() throws {
        let kernel = try standardKernel()
        let reports = Reports()
        let (presence, store) = presence(kernel, reports: reports)
        defer { presence.stop() }
        _ = try kernel.binder.bind(all: [selector("00:04.0")], to: .vfioPCI, persist: store)
        #expect(presence.unavailability() == nil)

        unplug(kernel)
        #expect(presence.unavailability()?.contains("is not on the bus") == true)
        try replug(kernel)
        #expect(presence.unavailability() == nil, "the override was not applied: \(reports.all)")
        #expect(try kernel.bus.device(at: address).driver == "vfio-pci")
        #expect(reports.all == ["0000:00:04.0 is back: bound to vfio-pci by its persistent override (\(store.file(for: address)))"])
    }

    /// A function only unbound (`modeless unbind` without --persist) stays where it was put:
    /// the override is for returns, not a fight with the administrator.
    @Test func anUnboundFunctionIsNotBoundAgain() throws {
        let kernel = try standardKernel()
        let reports = Reports()
        let (presence, store) = presence(kernel, reports: reports)
        defer { presence.stop() }
        _ = try kernel.binder.bind(all: [selector("00:04.0")], to: .vfioPCI, persist: store)
        _ = try kernel.binder.unbind(.address(address))
        let absence = try #require(presence.unavailability())
        #expect(absence.contains("is bound to e1000, not a user-mode driver"), "\(absence)")
        #expect(try kernel.bus.device(at: address).driver == "e1000")
        #expect(reports.all.isEmpty)
    }

    /// Without an override a returning function is left on its kernel driver; a refused
    /// override is reported once the settling time is over (here at once), with the bind's
    /// reason, and not tried again until the next return.
    @Test func aReturnWithoutOrWithARefusedOverride() throws {
        let kernel = try standardKernel()
        let reports = Reports()
        let (presence, store) = presence(kernel, reports: reports, settleNanoseconds: 0)
        defer { presence.stop() }
        _ = try kernel.binder.bind(all: [selector("00:04.0")], to: .vfioPCI)
        unplug(kernel)
        _ = presence.unavailability()
        try replug(kernel)
        #expect(presence.unavailability()?.contains("is bound to e1000") == true)
        #expect(reports.all.isEmpty)

        // Now with an override, but the interface is up when the function comes back.
        try store.set(OverrideStore.Override(driver: .vfioPCI), for: address)
        unplug(kernel)
        _ = presence.unavailability()
        try replug(kernel)
        try FileAccess.replaceFile("\(kernel.bus.path(of: address))/net/eth0/flags", with: Array("0x1003\n".utf8))
        let absence = try #require(presence.unavailability())
        #expect(absence.contains("its persistent override was not applied") && absence.contains("in use by the kernel"), "\(absence)")
        #expect(presence.unavailability()?.contains("not applied") == false, "tried again without a new return")
        #expect(reports.all.count == 1)
        #expect(try kernel.bus.device(at: address).driver == "e1000")
    }
}
