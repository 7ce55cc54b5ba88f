import ModelessBus
import ModelessSystem
import Testing

/// A small machine: edu alone, two e1000s (one interface up), an NVMe with a mounted
/// namespace, and an audio function sharing its IOMMU group with another function.
func standardKernel(iommu: Bool = true, loadable: [String: String] = ["uio_pci_generic": "uio_pci_generic"],
                    registered: [String] = ["e1000", "nvme", "snd_hda_intel", "vfio-pci"]) throws -> SimulatedPCIKernel {
    try SimulatedPCIKernel(
        devices: [
            .init(address: "0000:00:03.0", vendor: 0x1234, device: 0x11e8, iommuGroup: 3),
            .init(address: "0000:00:04.0", vendor: 0x8086, device: 0x100e, classCode: 0x020000, driver: "e1000",
                  iommuGroup: 4, interface: ("eth0", false)),
            .init(address: "0000:00:05.0", vendor: 0x8086, device: 0x100e, classCode: 0x020000, driver: "e1000",
                  iommuGroup: 5, interface: ("eth1", true)),
            .init(address: "0000:00:06.0", vendor: 0x1b36, device: 0x0010, classCode: 0x010802, driver: "nvme",
                  iommuGroup: 6, mountedBlock: ("nvme0n1", "/data")),
            .init(address: "0000:00:07.0", vendor: 0x8086, device: 0x293e, classCode: 0x040300, driver: "snd_hda_intel",
                  iommuGroup: 7),
            .init(address: "0000:00:07.1", vendor: 0x8086, device: 0x1234, iommuGroup: 7),
        ],
        registeredDrivers: registered,
        idTables: ["e1000": [0x8086_100e], "nvme": [0x1b36_0010], "snd_hda_intel": [0x8086_293e]],
        loadableModules: loadable, iommu: iommu)
}

func selector(_ text: String) throws -> DeviceSelector { try DeviceSelector(parsing: text) }

@Suite("Binding against a simulated kernel")
struct PCIBinderTests {
    @Test func bindsToVFIOAndRestoresTheOriginalDriver() throws {
        let kernel = try standardKernel()
        let bound = try kernel.binder.bind(selector("00:04.0"), to: .vfioPCI)
        #expect(bound.device.driver == "vfio-pci")
        #expect(bound.device.driverOverride == "vfio-pci")
        #expect(bound.node == "/dev/vfio/4")
        #expect(try BindingStore(directory: kernel.state).record(for: PCIAddress("0000:00:04.0")!)?.originalDriver == "e1000")

        let restored = try kernel.binder.unbind(selector("0000:00:04.0"))
        #expect(restored.device.driver == "e1000")
        #expect(restored.device.driverOverride == nil)
        #expect(try BindingStore(directory: kernel.state).load().isEmpty)
    }

    @Test func loadsAMissingModuleThenBinds() throws {
        let kernel = try standardKernel()
        let report = try kernel.binder.bind(selector("1234:11e8"), to: .uioPCIGeneric)
        #expect(report.steps.first == "load kernel module uio_pci_generic")
        #expect(report.device.driver == "uio_pci_generic")
        _ = try kernel.binder.unbind(selector("1234:11e8"))
        #expect(try kernel.bus.device(at: PCIAddress("0000:00:03.0")!).driver == nil)
    }

    @Test func remembersTheFirstDriverAcrossRebindsAndRuns() throws {
        let kernel = try standardKernel()
        _ = try kernel.binder.bind(selector("00:04.0"), to: .vfioPCI)
        // A new binder, as a later run of the command line would make.
        let later = PCIBinder(bus: kernel.bus, kernel: kernel, store: BindingStore(directory: kernel.state))
        let moved = try later.bind(selector("00:04.0"), to: .uioPCIGeneric)
        #expect(moved.device.driver == "uio_pci_generic")
        #expect(try later.unbind(selector("00:04.0")).device.driver == "e1000")
    }

    @Test func bindingTwiceIsANoOp() throws {
        let kernel = try standardKernel()
        _ = try kernel.binder.bind(selector("00:03.0"), to: .vfioPCI)
        let writes = kernel.writes.count
        let again = try kernel.binder.bind(selector("00:03.0"), to: .vfioPCI)
        #expect(again.alreadyDone)
        #expect(kernel.writes.count == writes)
    }

    @Test func dryRunReportsStepsAndChangesNothing() throws {
        let kernel = try standardKernel()
        let before = kernel.snapshot()
        let report = try kernel.binder.bind(selector("00:04.0"), to: .uioPCIGeneric, dryRun: true)
        #expect(report.steps == [
            "load kernel module uio_pci_generic",
            "write uio_pci_generic to \(kernel.sysfs)/bus/pci/devices/0000:00:04.0/driver_override",
            "unbind 0000:00:04.0 from e1000",
            "bind 0000:00:04.0 to uio_pci_generic",
        ])
        #expect(kernel.snapshot() == before)
        #expect(kernel.writes.isEmpty)
        #expect(!kernel.bus.isDriverRegistered("uio_pci_generic"))
    }

    @Test func forceBindsADeviceInUse() throws {
        let kernel = try standardKernel()
        let report = try kernel.binder.bind(selector("00:05.0"), to: .vfioPCI, force: true)
        #expect(report.device.driver == "vfio-pci")
    }

    @Test func aPeerOnVFIOKeepsTheGroupViable() throws {
        let kernel = try standardKernel()
        _ = try kernel.binder.bind(selector("00:07.0"), to: .vfioPCI)
        let report = try kernel.binder.bind(selector("00:07.1"), to: .vfioPCI)
        #expect(report.device.driver == "vfio-pci")
    }
}

/// Each bad input: the error kind, a message naming what was wrong, and nothing changed.
@Suite("Refused binds change nothing")
struct RefusedBindTests {
    struct Case: CustomTestStringConvertible, Sendable {
        var name: String
        var kind: BusError.Kind
        var messageMentions: String
        var setup: @Sendable (SimulatedPCIKernel) -> Void = { _ in }
        var iommu = true
        var loadable: [String: String] = ["uio_pci_generic": "uio_pci_generic"]
        var registered = ["e1000", "nvme", "snd_hda_intel", "vfio-pci"]
        var action: @Sendable (PCIBinder) throws -> Void
        var testDescription: String { name }
    }

    static let cases: [Case] = [
        Case(name: "address missing its function", kind: .malformedAddress, messageMentions: "0000:00:1f",
             action: { _ = try $0.bind(selector("0000:00:1f"), to: .vfioPCI) }),
        Case(name: "address with letters out of hex", kind: .malformedAddress, messageMentions: "zz:zz.z",
             action: { _ = try $0.bind(selector("zz:zz.z"), to: .vfioPCI) }),
        Case(name: "device number 32", kind: .malformedAddress, messageMentions: "00:20.0",
             action: { _ = try $0.bind(selector("00:20.0"), to: .vfioPCI) }),
        Case(name: "function number 8", kind: .malformedAddress, messageMentions: "00:01.8",
             action: { _ = try $0.bind(selector("00:01.8"), to: .vfioPCI) }),
        Case(name: "empty address", kind: .malformedAddress, messageMentions: "''",
             action: { _ = try $0.unbind(selector("")) }),
        Case(name: "no device at the address", kind: .noSuchDevice, messageMentions: "0000:00:09.0",
             action: { _ = try $0.bind(selector("0000:00:09.0"), to: .vfioPCI) }),
        Case(name: "no device with the id", kind: .noSuchDevice, messageMentions: "dead:beef",
             action: { _ = try $0.bind(selector("dead:beef"), to: .uioPCIGeneric) }),
        Case(name: "id matching two devices", kind: .ambiguousDevice, messageMentions: "0000:00:04.0, 0000:00:05.0",
             action: { _ = try $0.bind(selector("8086:100e"), to: .vfioPCI) }),
        Case(name: "interface up", kind: .deviceInUse, messageMentions: "eth1 (up)",
             action: { _ = try $0.bind(selector("00:05.0"), to: .vfioPCI) }),
        Case(name: "namespace mounted", kind: .deviceInUse, messageMentions: "mounted at /data",
             action: { _ = try $0.bind(selector("00:06.0"), to: .uioPCIGeneric) }),
        Case(name: "group shared with a host driver", kind: .iommuGroupNotViable, messageMentions: "0000:00:07.0 (snd_hda_intel)",
             action: { _ = try $0.bind(selector("00:07.1"), to: .vfioPCI) }),
        Case(name: "no IOMMU at all", kind: .noIOMMU, messageMentions: "no IOMMU is enabled", iommu: false,
             action: { _ = try $0.bind(selector("00:03.0"), to: .vfioPCI) }),
        Case(name: "module not available", kind: .moduleUnavailable, messageMentions: "uio_pci_generic", loadable: [:],
             action: { _ = try $0.bind(selector("00:03.0"), to: .uioPCIGeneric) }),
        Case(name: "vfio-pci module not available", kind: .moduleUnavailable, messageMentions: "Module vfio_pci not found",
             loadable: [:], registered: ["e1000", "nvme"],
             action: { _ = try $0.bind(selector("00:03.0"), to: .vfioPCI) }),
        Case(name: "not root", kind: .notPermitted, messageMentions: "writable by root only", setup: { $0.writable = false },
             action: { _ = try $0.bind(selector("00:04.0"), to: .vfioPCI) }),
        Case(name: "permission denied mid-way", kind: .notPermitted, messageMentions: "left as it was",
             setup: { $0.failWrites(endingIn: "e1000/unbind", with: .permissionDenied) },
             action: { _ = try $0.bind(selector("00:04.0"), to: .vfioPCI) }),
        Case(name: "driver refuses the device", kind: .kernelRefused, messageMentions: "left as it was (driver: e1000)",
             setup: { $0.failWrites(endingIn: "vfio-pci/bind", with: .invalidArgument) },
             action: { _ = try $0.bind(selector("00:04.0"), to: .vfioPCI) }),
        Case(name: "unbind of a device Modeless never bound", kind: .notBound, messageMentions: "driver: e1000",
             action: { _ = try $0.unbind(selector("00:04.0")) }),
    ]

    @Test(arguments: cases)
    func refusedWithoutChange(_ test: Case) throws {
        let kernel = try standardKernel(iommu: test.iommu, loadable: test.loadable, registered: test.registered)
        test.setup(kernel)
        let before = kernel.snapshot()
        let error = #expect(throws: BusError.self) { try test.action(kernel.binder) }
        #expect(error?.kind == test.kind)
        #expect(error?.message.contains(test.messageMentions) == true, "\(error?.message ?? "")")
        #expect(error?.remedy.isEmpty == false)
        #expect(kernel.snapshot() == before)
    }

    @Test func failedRestoreLeavesTheUserModeBinding() throws {
        let kernel = try standardKernel()
        _ = try kernel.binder.bind(selector("00:04.0"), to: .vfioPCI)
        let before = kernel.snapshot()
        kernel.failWrites(endingIn: "e1000/bind", with: .invalidArgument)
        let error = #expect(throws: BusError.self) { try kernel.binder.unbind(selector("00:04.0")) }
        #expect(error?.kind == .kernelRefused)
        #expect(kernel.snapshot() == before)
    }
}
