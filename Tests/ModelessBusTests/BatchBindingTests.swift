import Glibc
import ModelessBus
import ModelessSystem
import Testing

/// Several devices per call, selectors by interface, block device and class, against the
/// simulated kernel of ``standardKernel(iommu:loadable:registered:)``.
@Suite("Binding several devices, by name and class")
struct BatchBindingTests {
    func outcomeStates(_ outcomes: [DeviceOutcome]) -> [String] {
        outcomes.map { outcome in
            switch outcome.state {
            case .done(let report): "\(outcome.name) done \(report.device.driver ?? "-")"
            case .refused(let error): "\(outcome.name) refused \(error.kind)"
            case .unchanged: "\(outcome.name) unchanged"
            case .undone: "\(outcome.name) undone"
            case .notUndone: "\(outcome.name) not undone"
            case .overrideRemoved: "\(outcome.name) override removed"
            }
        }
    }

    @Test func interfacesAndBlockDevicesNameTheirFunction() throws {
        let kernel = try standardKernel()
        #expect(try kernel.bus.resolve(selector("eth0")).address.description == "0000:00:04.0")
        #expect(try kernel.bus.resolve(selector("/dev/nvme0n1")).address.description == "0000:00:06.0")
        let unknown = #expect(throws: BusError.self) { try kernel.bus.resolve(selector("eth9")) }
        #expect(unknown?.kind == .noSuchDevice && unknown?.message.contains("named eth9") == true)
        // A name the kernel has, but not below a PCI function (a virtual interface).
        try FileAccess.createDirectories("\(kernel.sysfs)/class/net/lo")
        let virtual = #expect(throws: BusError.self) { try kernel.bus.resolve(selector("lo")) }
        #expect(virtual?.kind == .noSuchDevice && virtual?.message.contains("lo is not on a PCI device") == true)
    }

    @Test func classesSelectTheirFunctions() throws {
        let kernel = try standardKernel()
        #expect(try kernel.bus.devices(in: .net).map(\.address.description) == ["0000:00:04.0", "0000:00:05.0"])
        #expect(try kernel.bus.devices(in: .storage).map(\.address.description) == ["0000:00:06.0"])
        let bare = try SimulatedPCIKernel(devices: [.init(address: "0000:00:03.0", vendor: 0x1234, device: 0x11e8)],
                                          registeredDrivers: [])
        let none = #expect(throws: BusError.self) { try bare.bus.devices(in: .storage) }
        #expect(none?.kind == .noSuchDevice && none?.message.contains("no storage devices (PCI class 0x01)") == true)
    }

    @Test func bindsSeveralThenGivesThemBack() throws {
        let kernel = try standardKernel()
        let before = kernel.snapshot()
        let bound = try kernel.binder.bind(all: [selector("00:03.0"), selector("eth0")], to: .vfioPCI)
        #expect(outcomeStates(bound) == ["0000:00:03.0 done vfio-pci", "eth0 done vfio-pci"])
        let store = try BindingStore(directory: kernel.state).load()
        #expect(store.count == 2)
        let back = try kernel.binder.unbind(all: [selector("00:03.0"), selector("00:04.0")])
        #expect(outcomeStates(back) == ["0000:00:03.0 done -", "0000:00:04.0 done e1000"])
        #expect(kernel.snapshot() == before)
    }

    /// One refused function refuses the call: every function is checked, none is changed, and
    /// the outcome of each is given.
    @Test(arguments: [
        (["00:03.0", "00:04.0", "00:05.0"], BusError.Kind.deviceInUse,
         ["0000:00:03.0 unchanged", "0000:00:04.0 unchanged", "0000:00:05.0 refused deviceInUse"]),
        (["00:03.0", "eth9"], .noSuchDevice, ["0000:00:03.0 unchanged", "eth9 refused noSuchDevice"]),
        (["eth0", "00:00.0", "00:07.1"], .noSuchDevice,
         ["eth0 unchanged", "0000:00:00.0 refused noSuchDevice", "0000:00:07.1 unchanged"]),
        (["00:07.1", "00:04.0"], .iommuGroupNotViable, ["0000:00:07.1 refused iommuGroupNotViable", "0000:00:04.0 unchanged"]),
    ] as [([String], BusError.Kind, [String])])
    func oneRefusalRefusesTheCall(_ names: [String], _ kind: BusError.Kind, _ expected: [String]) throws {
        let kernel = try standardKernel()
        let before = kernel.snapshot()
        let writes = kernel.writes
        let error = #expect(throws: BatchError.self) {
            try kernel.binder.bind(all: names.map(selector), to: .vfioPCI)
        }
        #expect(error?.failure.kind == kind)
        #expect(error.map { outcomeStates($0.outcomes) } == expected)
        #expect(kernel.snapshot() == before)
        #expect(kernel.writes == writes, "a refused call wrote to sysfs")
        #expect(!FileAccess.exists("\(kernel.state)/access/vfio"), "a refused call left an access mark")
    }

    /// Functions sharing an IOMMU group go to vfio-pci together in one call.
    @Test func anIOMMUGroupIsBoundInOneCall() throws {
        let kernel = try standardKernel()
        let bound = try kernel.binder.bind(all: [selector("00:07.1"), selector("00:07.0")], to: .vfioPCI)
        #expect(outcomeStates(bound) == ["0000:00:07.1 done vfio-pci", "0000:00:07.0 done vfio-pci"])
    }

    /// The kernel refuses the second function: the first is given back and both are as before.
    @Test func aKernelRefusalUndoesWhatWasDone() throws {
        let kernel = try standardKernel()
        let before = kernel.snapshot()
        kernel.failWrites(endingIn: "0000:00:04.0/driver_override", with: .permissionDenied)
        let error = #expect(throws: BatchError.self) {
            try kernel.binder.bind(all: [selector("00:03.0"), selector("00:04.0"), selector("00:06.0")], to: .uioPCIGeneric,
                                   force: true)
        }
        #expect(error?.failure.kind == .notPermitted)
        #expect(error.map { outcomeStates($0.outcomes) } == ["0000:00:03.0 undone", "0000:00:04.0 refused notPermitted",
                                                             "0000:00:06.0 unchanged"])
        #expect(kernel.snapshot() == before)
    }

    @Test func unbindingSeveralIsAllOrNothing() throws {
        let kernel = try standardKernel()
        _ = try kernel.binder.bind(all: [selector("00:03.0")], to: .vfioPCI)
        let before = kernel.snapshot()
        let error = #expect(throws: BatchError.self) {
            try kernel.binder.unbind(all: [selector("00:03.0"), selector("00:04.0")])
        }
        #expect(error?.failure.kind == .notBound)
        #expect(error.map { outcomeStates($0.outcomes) } == ["0000:00:03.0 unchanged", "0000:00:04.0 refused notBound"])
        #expect(kernel.snapshot() == before)
    }
}

/// The marks the scoped udev rules look for: only what Modeless bound.
@Suite("Access marks for the udev rules")
struct AccessMarkerTests {
    @Test func marksWhatItBindsAndNothingElse() throws {
        let kernel = try SimulatedPCIKernel(
            devices: [
                .init(address: "0000:00:03.0", vendor: 0x1234, device: 0x11e8, iommuGroup: 3),
                // Handed to vfio-pci by another tool (libvirt): not Modeless's to grant.
                .init(address: "0000:00:08.0", vendor: 0x1234, device: 0x11e8, driver: "vfio-pci", iommuGroup: 8),
            ],
            registeredDrivers: ["vfio-pci", "uio_pci_generic"])
        let markers = kernel.binder.accessMarkers
        let other = try kernel.binder.bind(selector("00:08.0"), to: .vfioPCI)
        #expect(other.alreadyDone)
        #expect(markers.markedGroups().isEmpty)

        _ = try kernel.binder.bind(selector("00:03.0"), to: .vfioPCI)
        #expect(markers.markedGroups() == [3])
        #expect(FileAccess.exists(markers.functionMark(PCIAddress("0000:00:03.0")!)))
        _ = try kernel.binder.bind(selector("00:03.0"), to: .uioPCIGeneric)
        #expect(FileAccess.exists(markers.functionMark(PCIAddress("0000:00:03.0")!)))
        _ = try kernel.binder.unbind(selector("00:03.0"))
        #expect(markers.markedGroups().isEmpty)
        #expect(!FileAccess.exists(markers.functionMark(PCIAddress("0000:00:03.0")!)))
    }

    @Test func aFailedBindLeavesNoMark() throws {
        let kernel = try standardKernel()
        kernel.failWrites(endingIn: "vfio-pci/bind", with: .invalidArgument)
        #expect(throws: BusError.self) { try kernel.binder.bind(selector("00:03.0"), to: .vfioPCI) }
        #expect(kernel.binder.accessMarkers.markedGroups().isEmpty)
        #expect(!FileAccess.exists(kernel.binder.accessMarkers.functionMark(PCIAddress("0000:00:03.0")!)))
    }
}
