import Glibc
import ModelessBus
import ModelessSystem
import Testing

/// Persistent overrides across a reboot of the bench, in two guest runs sharing the bench's out
/// directory (`scripts/vm/run --out DIR`; scripts/test does this):
///
/// 1. ``PersistentOverrideRecordTests`` (part of every VM run) binds edu (by address) and the
///    second e1000 (by its interface name) with `--persist` into `$MODELESS_VM_OUT/persist-config`,
///    then gives both back, leaving the overrides; it records the guest's boot id beside them.
/// 2. ``PersistentOverrideRebootTests`` runs only when `MODELESS_PERSIST_CONFIG` names that
///    directory, in a fresh guest: the kernel's e1000 driver takes its NIC as at boot, and the
///    boot-time hook (the `ExecStart` of `packaging/systemd/modeless-overrides.service`) must
///    bind both devices again.
enum PersistBench {
    /// The configuration directory the first run writes: in the out directory, which outlives
    /// the guest.
    static var recordedConfig: String {
        "\(getenv("MODELESS_VM_OUT").map { String(cString: $0) } ?? "/tmp/vm-out")/persist-config"
    }

    /// The configuration directory handed to the second run, if any.
    static var configToApply: String? { getenv("MODELESS_PERSIST_CONFIG").map { String(cString: $0) } }

    /// This boot of the guest: `/proc/sys/kernel/random/boot_id`.
    static func bootID() -> String { FileAccess.readTextIfPresent("/proc/sys/kernel/random/boot_id") ?? "" }

    /// Loads the kernel's e1000 driver, waits until it has the `index`th e1000 and its
    /// interface, and takes the interface down; returns the interface's name.
    static func e1000OnKernelDriver(_ index: Int) throws -> (PCIAddress, String) {
        #expect(try TestBench.shell("modprobe e1000").status == 0)
        let nic = try TestBench.e1000(index)
        var name: String?
        for _ in 0..<200 where name == nil {
            name = try TestBench.bus.device(at: nic).kernelUses.compactMap { use -> String? in
                if case .networkInterface(let name, _) = use { name } else { nil }
            }.first
            if name == nil { usleep(50_000) }
        }
        let interface = try #require(name, "the e1000 driver did not give \(nic) an interface")
        // Down, as at boot before the network is configured (an earlier suite may have left it up).
        #expect(try TestBench.shell("ip link set \(interface) down").status == 0)
        return (nic, interface)
    }
}

extension VM {
    @Suite("persistent overrides: recorded")
    struct PersistentOverrideRecordTests {
        @Test func bindPersistRecordsOverridesThatOutliveUnbind() throws {
            let config = PersistBench.recordedConfig
            _ = try TestBench.shell("rm -rf '\(config)'")
            let edu = try TestBench.edu()
            let (nic, interface) = try PersistBench.e1000OnKernelDriver(1)
            let before = try TestBench.bindings()

            // An invalid persist changes nothing and writes nothing: the host bridge with edu.
            let refused = try TestBench.modeless("bind", "0000:00:00.0", edu.description, "--persist", "--config-dir", config)
            #expect(refused.status == 78, "\(refused.output)")
            #expect(refused.output.contains("0000:00:00.0: refused: 0000:00:00.0 is a host bridge"), "\(refused.output)")
            #expect(refused.output.contains("\(edu): checked, left as it was"), "\(refused.output)")
            #expect(try TestBench.bindings() == before)
            #expect((try? FileAccess.listDirectory("\(config)/overrides"))?.isEmpty ?? true)

            let bound = try TestBench.modeless("bind", edu.description, interface, "--persist", "--config-dir", config)
            #expect(bound.status == 0, "\(bound.output)")
            #expect(bound.output.contains("\(nic) (\(interface)): bound to vfio-pci"), "\(bound.output)")
            #expect(TestBench.driver(of: edu) == "vfio-pci" && TestBench.driver(of: nic) == "vfio-pci")
            let listed = try TestBench.modeless("overrides", "--config-dir", config)
            #expect(listed.output.contains("\(edu) -> vfio-pci  [applied]"), "\(listed.output)")
            #expect(listed.output.contains("\(nic) -> vfio-pci  [applied]"), "\(listed.output)")

            // Given back for now (the other suites need the devices); the overrides stay.
            let back = try TestBench.modeless("unbind", edu.description, nic.description)
            #expect(back.status == 0, "\(back.output)")
            #expect(try TestBench.bindings() == before)
            #expect(try OverrideStore(configDirectory: config).load().keys.sorted() == [edu, nic].sorted())
            try FileAccess.replaceFile("\(config)/boot-id", with: Array(PersistBench.bootID().utf8))
        }
    }

    @Suite("persistent overrides: after a reboot",
           .enabled(if: PersistBench.configToApply != nil, "needs MODELESS_PERSIST_CONFIG from an earlier guest run (scripts/test)"))
    struct PersistentOverrideRebootTests {
        @Test func theBootHookBindsThePersistedDevicesAgain() throws {
            let config = try #require(PersistBench.configToApply)
            let recordedBoot = try #require(FileAccess.readTextIfPresent("\(config)/boot-id"), "no boot id in \(config): run the recording suite first")
            #expect(recordedBoot != PersistBench.bootID(), "the overrides were recorded in this same boot, not an earlier guest")
            let edu = try TestBench.edu()
            let (nic, _) = try PersistBench.e1000OnKernelDriver(1)
            #expect(TestBench.driver(of: edu) == nil)
            #expect(FileAccess.exists("/run/modeless/bindings.json") == false, "a fresh guest has no binding record")

            // The hook as installed: the unit's ExecStart with the built binary's directory.
            let unit = try FileAccess.readText("packaging/systemd/modeless-overrides.service")
            let execStart = try #require(unit.split(separator: "\n").first { $0.hasPrefix("ExecStart=") })
            let binDirectory = String(try ProgramRunner.builtProgram("modeless").split(separator: "/", omittingEmptySubsequences: false)
                .dropLast().joined(separator: "/"))
            let command = execStart.dropFirst("ExecStart=".count).replacingAll("@BINDIR@", with: binDirectory)
            let applied = try TestBench.shell("MODELESS_CONFIG_DIR='\(config)' \(command)")
            #expect(applied.status == 0, "\(applied.output)")
            #expect(applied.output.contains("\(edu): bound to vfio-pci"), "\(applied.output)")
            #expect(applied.output.contains("\(nic): bound to vfio-pci"), "\(applied.output)")
            #expect(TestBench.driver(of: edu) == "vfio-pci" && TestBench.driver(of: nic) == "vfio-pci")
            #expect(try BindingStore.standard().record(for: nic)?.originalDriver == "e1000")
            let group = try #require(TestBench.bus.device(at: nic).iommuGroup)
            #expect(FileAccess.exists("/run/modeless/access/vfio/\(group)"), "no access mark for group \(group)")

            // Given back for good: the kernel's driver again, and no override left.
            let back = try TestBench.modeless("unbind", edu.description, nic.description, "--persist", "--config-dir", config)
            #expect(back.status == 0, "\(back.output)")
            #expect(TestBench.driver(of: nic) == "e1000" && TestBench.driver(of: edu) == nil)
            #expect(try OverrideStore(configDirectory: config).load().isEmpty)
        }
    }
}

extension Substring {
    func replacingAll(_ target: String, with replacement: String) -> String {
        var result = "", rest = self[...]
        while let range = rest.firstRange(of: target) {
            result += rest[..<range.lowerBound] + replacement
            rest = rest[range.upperBound...]
        }
        return result + rest
    }
}
