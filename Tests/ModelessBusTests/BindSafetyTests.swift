import Glibc
import ModelessBus
import ModelessSystem
import Testing

/// A temporary file of `megabytes` MiB, prepared by `command` (run with the file's path as
/// its last argument), for libblkid to probe.
func imageFile(_ megabytes: Int, in directory: String, named name: String, _ prepare: String? = nil) throws -> String {
    let path = "\(directory)/\(name)"
    #expect(try ProgramRunner.run("truncate", ["-s", "\(megabytes)M", path]).status == 0)
    if let prepare {
        let result = try ProgramRunner.run("sh", ["-c", "\(prepare) \(path)"])
        #expect(result.status == 0, "\(prepare): \(result.output) (scripts/setup installs e2fsprogs and fdisk)")
    }
    return path
}

/// libblkid's answer for one field of `path`, as the `blkid` program prints it.
func blkidValue(_ tag: String, of path: String) throws -> String {
    try ProgramRunner.run("blkid", ["-p", "-o", "value", "-s", tag, path]).output.trimmingBlanks()
}

@Suite("Block device signatures through libblkid")
final class BlockSignatureTests {
    let directory: String

    init() throws {
        var template = Array("/tmp/modeless-blkid-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw SystemError("mkdtemp", "/tmp", errno: .current) }
        directory = String(cString: made)
    }

    deinit {
        _ = try? ProgramRunner.run("rm", ["-rf", directory])
    }

    @Test func anExt4FileSystem() throws {
        let path = try imageFile(8, in: directory, named: "ext4.img", "mkfs.ext4 -q -F -L scratch")
        let signature = try #require(try BlockSignature.probe(path))
        #expect(signature.type == "ext4" && signature.usage == "filesystem" && signature.partitionTable == nil)
        #expect(signature.label == "scratch")
        let uuid = try blkidValue("UUID", of: path)
        #expect(uuid.count == 36 && signature.uuid == uuid)
        #expect(signature.description == "an ext4 filesystem (UUID \(uuid), label scratch)")
    }

    @Test func aGPTPartitionTable() throws {
        let path = try imageFile(8, in: directory, named: "gpt.img", "echo 'label: gpt' | sfdisk -q")
        let signature = try #require(try BlockSignature.probe(path))
        #expect(signature.partitionTable == "gpt" && signature.type == nil)
        let uuid = try blkidValue("PTUUID", of: path)
        #expect(signature.description == "a gpt partition table (PTUUID \(uuid))")
    }

    @Test func swapSpace() throws {
        let path = try imageFile(8, in: directory, named: "swap.img", "mkswap -q")
        #expect(try BlockSignature.probe(path)?.description.hasPrefix("a swap signature (UUID ") == true)
    }

    @Test func blankMediaHasNone() throws {
        #expect(try BlockSignature.probe(try imageFile(8, in: directory, named: "blank.img")) == nil)
    }

    @Test func aMissingDeviceIsAnErrorNamingIt() throws {
        let error = #expect(throws: SystemError.self) { try BlockSignature.probe("\(directory)/nvme9n1") }
        #expect(error?.subject == "\(directory)/nvme9n1" && error?.errno == .noSuchFileOrDirectory)
    }
}

/// A machine with the functions the binder must think twice about: storage whose namespace
/// is a file in the simulated `/dev`, platform infrastructure of each refused class, and edu.
func safetyKernel() throws -> SimulatedPCIKernel {
    try SimulatedPCIKernel(
        devices: [
            .init(address: "0000:00:00.0", vendor: 0x8086, device: 0x29c0, classCode: 0x060000, iommuGroup: 0),
            .init(address: "0000:00:01.0", vendor: 0x1b36, device: 0x000c, classCode: 0x060400, driver: "pcieport", iommuGroup: 1),
            .init(address: "0000:00:02.0", vendor: 0x8086, device: 0x2931, classCode: 0x080600, iommuGroup: 2),
            .init(address: "0000:00:03.0", vendor: 0x1234, device: 0x11e8, iommuGroup: 3),
            .init(address: "0000:00:04.0", vendor: 0x8086, device: 0x0b00, classCode: 0x050000, iommuGroup: 4),
            .init(address: "0000:00:05.0", vendor: 0x8086, device: 0x0b00, classCode: 0x0b0000, iommuGroup: 5),
            .init(address: "0000:00:07.0", vendor: 0x8086, device: 0x37c8, classCode: 0x0b4000, iommuGroup: 7),
            .init(address: "0000:00:06.0", vendor: 0x1b36, device: 0x0010, classCode: 0x010802, driver: "nvme",
                  iommuGroup: 6, mountedBlock: ("nvme0n1", nil)),
        ],
        registeredDrivers: ["nvme", "pcieport", "vfio-pci"],
        idTables: ["nvme": [0x1b36_0010], "pcieport": [0x1b36_000c]],
        loadableModules: ["uio_pci_generic": "uio_pci_generic"])
}

@Suite("Binding refuses data, infrastructure and held devices")
struct BindSafetyTests {
    /// Runs `action`, expects it refused with `kind` and a message containing `text`, and
    /// checks that no sysfs attribute was written and no module loaded.
    func expectRefused(_ kernel: SimulatedPCIKernel, _ kind: BusError.Kind, mentioning text: String,
                       _ action: (PCIBinder) throws -> Void) {
        let before = kernel.snapshot()
        let writes = kernel.writes.count
        let error = #expect(throws: BusError.self) { try action(kernel.binder) }
        #expect(error?.kind == kind, "\(error?.description ?? "")")
        #expect(error?.message.contains(text) == true, "\(error?.message ?? "")")
        #expect(error?.remedy.isEmpty == false)
        #expect(kernel.snapshot() == before)
        #expect(kernel.writes.count == writes, "\(kernel.writes.dropFirst(writes))")
        #expect(!kernel.bus.isDriverRegistered("uio_pci_generic"))
    }

    // MARK: Data on a storage device

    @Test func aNamespaceWithAFileSystemIsRefusedNamingIt() throws {
        let kernel = try safetyKernel()
        let namespace = try imageFile(8, in: kernel.dev, named: "nvme0n1", "mkfs.ext4 -q -F")
        let uuid = try blkidValue("UUID", of: namespace)
        expectRefused(kernel, .holdsData, mentioning: "0000:00:06.0: nvme0n1 holds an ext4 filesystem (UUID \(uuid))") {
            _ = try $0.bind(selector("00:06.0"), to: .vfioPCI)
        }
        expectRefused(kernel, .holdsData, mentioning: "ext4") {
            _ = try $0.bind(selector("00:06.0"), to: .uioPCIGeneric, dryRun: true)
        }
        let forced = try kernel.binder.bind(selector("00:06.0"), to: .vfioPCI, force: true)
        #expect(forced.device.driver == "vfio-pci")
        #expect(try kernel.binder.unbind(selector("00:06.0")).device.driver == "nvme")
    }

    @Test func aPartitionTableIsRefused() throws {
        let kernel = try safetyKernel()
        _ = try imageFile(8, in: kernel.dev, named: "nvme0n1", "echo 'label: gpt' | sfdisk -q")
        expectRefused(kernel, .holdsData, mentioning: "nvme0n1 holds a gpt partition table (PTUUID ") {
            _ = try $0.bind(selector("00:06.0"), to: .vfioPCI)
        }
    }

    @Test func blankMediaBindsWithoutForce() throws {
        let kernel = try safetyKernel()
        _ = try imageFile(8, in: kernel.dev, named: "nvme0n1")
        #expect(try kernel.binder.bind(selector("00:06.0"), to: .vfioPCI).device.driver == "vfio-pci")
    }

    @Test func aBlockDeviceThatCannotBeReadIsRefused() throws {
        let kernel = try safetyKernel()
        expectRefused(kernel, .systemFailure, mentioning: "cannot tell whether nvme0n1 of 0000:00:06.0 holds data") {
            _ = try $0.bind(selector("00:06.0"), to: .vfioPCI)
        }
    }

    // MARK: Platform infrastructure

    @Test(arguments: [
        ("00:00.0", "0000:00:00.0 is a host bridge (class 0x0600)"),
        ("00:01.0", "0000:00:01.0 is a PCI bridge (class 0x0604)"),
        ("00:02.0", "0000:00:02.0 is an IOMMU (class 0x0806)"),
        ("00:04.0", "0000:00:04.0 is a RAM memory (class 0x0500)"),
        ("00:05.0", "0000:00:05.0 is a 386 (class 0x0b00)"),
    ])
    func infrastructureIsRefusedNamingItsClass(_ address: String, _ message: String) throws {
        let kernel = try safetyKernel()
        expectRefused(kernel, .infrastructureDevice, mentioning: message) { _ = try $0.bind(selector(address), to: .vfioPCI) }
    }

    @Test func forceBindsInfrastructure() throws {
        let kernel = try safetyKernel()
        #expect(try kernel.binder.bind(selector("00:00.0"), to: .vfioPCI, force: true).device.driver == "vfio-pci")
    }

    /// A co-processor (an accelerator such as QuickAssist, class 0b 40) is a device to drive.
    @Test func aCoProcessorBindsWithoutForce() throws {
        let kernel = try safetyKernel()
        #expect(try kernel.binder.bind(selector("00:07.0"), to: .vfioPCI).device.driver == "vfio-pci")
    }

    // MARK: Processes holding the device

    @Test func aProcessHoldingTheVFIOGroupBlocksRebindAndUnbind() throws {
        let kernel = try safetyKernel()
        _ = try kernel.binder.bind(selector("00:03.0"), to: .vfioPCI)
        try kernel.addProcess(4242, command: "edu-driver", holding: ["/dev/vfio/vfio", "/dev/vfio/3"])
        try kernel.addProcess(4343, command: "other", holding: ["/dev/vfio/5", "/dev/uio1"])
        for force in [false, true] {
            expectRefused(kernel, .heldByProcess, mentioning: "pid 4242 (edu-driver) has /dev/vfio/3 open") {
                _ = try $0.bind(selector("00:03.0"), to: .uioPCIGeneric, force: force)
            }
        }
        expectRefused(kernel, .heldByProcess, mentioning: "pid 4242 (edu-driver)") { _ = try $0.unbind(selector("00:03.0")) }
        let error = #expect(throws: BusError.self) { try kernel.binder.unbind(selector("00:03.0")) }
        #expect(error?.message.contains("4343") == false)
        #expect(error?.remedy.contains("kill 4242") == true)
    }

    @Test func aProcessHoldingTheUIONodeBlocksRebindAndUnbind() throws {
        let kernel = try safetyKernel()
        _ = try kernel.binder.bind(selector("00:03.0"), to: .uioPCIGeneric)
        #expect(kernel.bus.userModeNodes(of: try kernel.bus.device(at: PCIAddress("0000:00:03.0")!)) == ["/dev/uio0"])
        try kernel.addProcess(77, command: "sleep", holding: ["/dev/uio0"])
        let writes = kernel.writes.count
        let before = kernel.snapshot()
        for action in [{ (binder: PCIBinder) throws in _ = try binder.bind(selector("00:03.0"), to: .vfioPCI) },
                       { (binder: PCIBinder) throws in _ = try binder.unbind(selector("00:03.0")) }] {
            let error = #expect(throws: BusError.self) { try action(kernel.binder) }
            #expect(error?.kind == .heldByProcess)
            #expect(error?.message.contains("pid 77 (sleep) has /dev/uio0 open") == true, "\(error?.message ?? "")")
        }
        #expect(kernel.writes.count == writes && kernel.snapshot() == before)
    }

    /// `unbind --release` asks a Modeless program holding the device through VFIO to let go,
    /// whichever of Modeless's programs it is (`modeless bench` runs as `modeless-bench`), and
    /// still refuses when any other process holds it.
    @Test(arguments: ["modeless", "modeless-bench"])
    func releaseAsksAModelessProgramAndRefusesAnyOther(_ program: String) throws {
        let kernel = try safetyKernel()
        _ = try kernel.binder.bind(selector("00:03.0"), to: .vfioPCI)
        try kernel.addProcess(4242, command: program, holding: ["/dev/vfio/vfio", "/dev/vfio/3"])
        let report = try kernel.binder.unbind(selector("00:03.0"), releasing: true, dryRun: true)
        #expect(report.steps.first == "ask pid 4242 (\(program)), which has /dev/vfio/3 open, to release it (VFIO device request)",
                "\(report.steps)")
        try kernel.addProcess(4343, command: "\(program)x", holding: ["/dev/vfio/3"])
        expectRefused(kernel, .heldByProcess, mentioning: "pid 4343 (\(program)x)") {
            _ = try $0.unbind(selector("00:03.0"), releasing: true, dryRun: true)
        }
    }

    @Test func nobodyHoldingMeansNoRefusal() throws {
        let kernel = try safetyKernel()
        _ = try kernel.binder.bind(selector("00:03.0"), to: .vfioPCI)
        try kernel.addProcess(99, command: "bash", holding: ["/dev/vfio/30", "/dev/uio7"])
        #expect(try kernel.binder.bind(selector("00:03.0"), to: .uioPCIGeneric).device.driver == "uio_pci_generic")
        #expect(try kernel.binder.unbind(selector("00:03.0")).device.driver == nil)
    }
}
