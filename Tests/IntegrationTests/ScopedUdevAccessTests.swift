import Glibc
import ModelessBus
import ModelessSystem
import Testing

extension VM {
    /// The udev rules (`udev/70-modeless.rules`) under a real systemd-udevd in the guest: the
    /// VFIO group and UIO nodes of devices Modeless bound go to the named user and group, and a
    /// group handed to vfio-pci by something else (libvirt, a hand-written sysfs write) keeps the
    /// kernel's root-only node.
    @Suite("udev access only for what Modeless bound")
    struct ScopedUdevAccessTests {
        /// An owner and group the guest (this machine's /etc) has: nobody and users.
        static let owner = (name: "nobody", uid: uid_t(65534))
        static let group = (name: "users", gid: gid_t(100))

        /// Owner, group and permission bits of a node.
        func access(_ path: String) -> (uid: uid_t, gid: gid_t, mode: mode_t)? {
            var info = stat()
            guard stat(path, &info) == 0 else { return nil }
            return (info.st_uid, info.st_gid, info.st_mode & 0o7777)
        }

        func waitForNode(_ path: String) {
            for _ in 0..<200 where !FileAccess.exists(path) { usleep(10_000) }
        }

        /// Waits up to 10 s for a node to be handed to the test's owner and group, 0660, and
        /// returns what it has then. `udevadm settle` alone is not enough against a daemon that
        /// has just started: it can answer before the daemon has read the kernel's event.
        func waitForGrant(_ path: String) -> (uid: uid_t, gid: gid_t, mode: mode_t)? {
            for _ in 0..<1000 {
                if let found = access(path), found.uid == Self.owner.uid, found.gid == Self.group.gid, found.mode == 0o660 { return found }
                usleep(10_000)
            }
            return access(path)
        }

        /// What udev knows of a node and what its daemon logged, for a failure's message.
        func udevReport(_ path: String) -> String {
            let info = (try? TestBench.shell("udevadm info --query=all --name=\(path) 2>&1; ls -l /run/modeless/access/* 2>&1").output) ?? ""
            return "\(info)\nudevd: \(FileAccess.readTextIfPresent("/tmp/udevd.log") ?? "")"
        }

        @Test func nodesOfDevicesModelessBoundAndNoOthers() throws {
            // The rules as scripts/install (through scripts/install-udev-rules) writes them for
            // --user nobody --group users.
            let stage = "/tmp/modeless-udev-rules"
            let written = try TestBench.shell("""
                rm -rf \(stage) && scripts/install-udev-rules --destdir \(stage) --user \(Self.owner.name) --group \(Self.group.name)
                """)
            defer { _ = try? TestBench.shell("rm -rf \(stage)") }
            #expect(written.status == 0, "\(written.output)")
            let rules = try FileAccess.readText("\(stage)/etc/udev/rules.d/70-modeless.rules")
            try FileAccess.createDirectories("/run/udev/rules.d")
            try FileAccess.replaceFile("/run/udev/rules.d/70-modeless.rules", with: Array(rules.utf8))
            let daemon = try TestBench.shell("""
                udevd=$(command -v systemd-udevd || echo /lib/systemd/systemd-udevd)
                setsid "$udevd" </dev/null >/tmp/udevd.log 2>&1 & echo $!
                """)
            let pid = try #require(Int32(daemon.output.trimmingBlanks()), "systemd-udevd did not start: \(daemon.output)")
            // Stopped before any kernel driver gets a device back, so that udev's own rules
            // never rename an interface the other suites look for.
            var running = true
            func stopDaemon() {
                guard running else { return }
                running = false
                kill(pid, SIGTERM)
                for _ in 0..<300 where kill(pid, 0) == 0 { usleep(10_000) }
                _ = try? TestBench.shell("rm -f /run/udev/rules.d/70-modeless.rules")
            }
            defer { stopDaemon() }
            for _ in 0..<300 where !FileAccess.exists("/run/udev/control") { usleep(10_000) }
            #expect(FileAccess.exists("/run/udev/control"), "systemd-udevd is not running: \(FileAccess.readTextIfPresent("/tmp/udevd.log") ?? "")")

            // Bound by Modeless: the group's node goes to nobody:users, 0660.
            let edu = try TestBench.edu()
            let bound = try TestBench.modeless("bind", edu.description)
            #expect(bound.status == 0, "\(bound.output)")
            let eduGroup = try #require(TestBench.bus.device(at: edu).iommuGroup)
            let eduNode = "/dev/vfio/\(eduGroup)"
            _ = try TestBench.shell("udevadm settle --timeout=60")
            let granted = waitForGrant(eduNode)
            #expect(granted?.uid == Self.owner.uid && granted?.gid == Self.group.gid && granted?.mode == 0o660,
                    "\(eduNode): \(String(describing: granted)); bind said: \(bound.output)\n\(udevReport(eduNode))")

            // Handed to vfio-pci without Modeless, as libvirt does for a VM: left root-only.
            let other = try TestBench.e1000(0)
            let handBound = try TestBench.shell("""
                d=/sys/bus/pci/devices/\(other)
                echo vfio-pci > $d/driver_override
                [ -e $d/driver ] && echo \(other) > $d/driver/unbind
                echo \(other) > /sys/bus/pci/drivers_probe
                readlink $d/driver
                """)
            defer {
                stopDaemon()
                _ = try? TestBench.shell("""
                    d=/sys/bus/pci/devices/\(other)
                    echo \(other) > /sys/bus/pci/drivers/vfio-pci/unbind; echo > $d/driver_override
                    echo \(other) > /sys/bus/pci/drivers_probe
                    """)
            }
            #expect(handBound.output.contains("vfio-pci"), "\(handBound.output)")
            let otherGroup = try #require(TestBench.bus.device(at: other).iommuGroup)
            let otherNode = "/dev/vfio/\(otherGroup)"
            waitForNode(otherNode)
            _ = try TestBench.shell("udevadm settle --timeout=60")
            let untouched = access(otherNode)
            #expect(untouched?.uid == 0 && untouched?.gid == 0 && untouched?.mode == 0o600,
                    "\(otherNode) of a group Modeless did not bind: \(String(describing: untouched))")
            // Modeless will not claim it either: it is already on vfio-pci, so nothing is marked.
            #expect(try TestBench.modeless("bind", other.description).output.contains("nothing to do"))
            #expect(!FileAccess.exists("/run/modeless/access/vfio/\(otherGroup)"))

            // UIO: the node of a function Modeless bound goes to nobody:users as well.
            let moved = try TestBench.modeless("bind", edu.description, "--to", "uio_pci_generic")
            #expect(moved.status == 0, "\(moved.output)")
            let uioNode = try #require(TestBench.bus.userModeNode(of: TestBench.bus.device(at: edu)))
            _ = try TestBench.shell("udevadm settle --timeout=60")
            let uio = waitForGrant(uioNode)
            #expect(uio?.uid == Self.owner.uid && uio?.gid == Self.group.gid && uio?.mode == 0o660,
                    "\(uioNode): \(String(describing: uio))\n\(udevReport(uioNode))")
            stopDaemon()
            let back = try TestBench.modeless("unbind", edu.description)
            #expect(back.status == 0, "\(back.output)")
            #expect(try TestBench.bindings()[edu.description] == "- override=-")
            #expect(!FileAccess.exists("/run/modeless/access/vfio/\(eduGroup)"))
        }
    }
}
