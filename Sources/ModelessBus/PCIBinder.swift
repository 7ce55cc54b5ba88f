import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// Hands PCI functions to a user-mode driver (vfio-pci or uio_pci_generic) and gives them
/// back to the driver they had.
///
/// Every check runs before anything changes. If the kernel then refuses a step, the binder
/// puts back the previous driver and `driver_override`, so a failed bind or unbind leaves
/// the device as it was.
public struct PCIBinder: Sendable {
    /// Where devices are found and read.
    public let bus: PCIBus
    /// How the binder writes to sysfs and loads modules; tests substitute a recording double.
    public let kernel: any PCIKernelControl
    /// The record of what each function had before Modeless bound it, for giving it back.
    public let store: BindingStore

    /// A binder of the devices of `bus` through `kernel`, recording in `store` (by default the
    /// running system's, with the record in `$MODELESS_STATE_DIR` or `/run/modeless`).
    public init(bus: PCIBus = PCIBus(), kernel: any PCIKernelControl = LinuxKernelControl(),
                store: BindingStore = .standard()) {
        self.bus = bus
        self.kernel = kernel
        self.store = store
    }

    /// What a bind or unbind did, or with `dryRun` would do.
    public struct Report: Sendable {
        /// The device as it is afterwards (as it was, for a dry run).
        public var device: PCIDevice
        /// The steps, in order, each a sentence.
        public var steps: [String]
        /// Whether nothing needed to change.
        public var alreadyDone: Bool
        /// The character device a user-mode driver now offers, if any.
        public var node: String?
    }

    /// Binds the device a selector names to `driver`.
    ///
    /// Refused, before anything changes: platform infrastructure (``InfrastructureClass``), a
    /// device the kernel is using, a device whose block devices hold a partition table or a
    /// file system, RAID or LVM signature (``BlockSignature``), and a device a process holds
    /// through its user-mode node (``NodeHolder``). `force` overrides the first three; nothing
    /// overrides the last, since the kernel's unbind would wait for that process without end.
    ///
    /// - Parameters:
    ///   - selector: the device: an address, `vendor:device` ids, an interface or a block device.
    ///   - driver: the user-mode driver to bind it to.
    ///   - force: bind even if the device is infrastructure, is in use by the kernel (an
    ///     interface up, a disk mounted) or holds data.
    ///   - dryRun: check everything and report the steps without changing anything.
    public func bind(_ selector: DeviceSelector, to driver: UserModeDriver,
                     force: Bool = false, dryRun: Bool = false) throws(BusError) -> Report {
        try bind(selector, to: driver, force: force, dryRun: dryRun, companions: [])
    }

    /// The access marks udev's rules look for (``AccessMarkers``), beside the binding store.
    public var accessMarkers: AccessMarkers { AccessMarkers(directory: "\(store.directory)/access") }

    /// ``bind(_:to:force:dryRun:)`` as one of several functions bound in one call: the IOMMU
    /// group check counts `companions`, the other functions of the call, as already on vfio-pci.
    func bind(_ selector: DeviceSelector, to driver: UserModeDriver, force: Bool, dryRun: Bool,
              companions: Set<PCIAddress>) throws(BusError) -> Report {
        let device = try bus.resolve(selector)
        if device.driver == driver.rawValue {
            return Report(device: device, steps: [], alreadyDone: true, node: bus.userModeNode(of: device))
        }
        if !force { try checkNotInfrastructure(device) }
        try checkPermission(device)
        if driver == .vfioPCI { try checkIOMMU(device, companions: companions) }
        try checkNotHeld(device)
        if device.isActiveInKernel && !force {
            let uses = device.kernelUses.filter(\.isActive).map(\.description).joined(separator: "; ")
            throw BusError(.deviceInUse, "\(device.address) is in use by the kernel: \(uses)",
                           remedy: "stop using it first (ip link set IFACE down, umount), or pass --force if you are sure")
        }
        if !force { try checkHoldsNoData(device) }

        var steps: [String] = []
        if !bus.isDriverRegistered(driver.rawValue) {
            steps.append("load kernel module \(driver.moduleName)")
            if !dryRun { try loadModule(driver.moduleName, for: driver.rawValue) }
        }
        steps += plannedSteps(device, to: driver.rawValue, override: driver.rawValue)
        if dryRun { return Report(device: device, steps: steps, alreadyDone: false, node: nil) }

        let existing = try store.record(for: device.address)
        if existing == nil {
            try store.setRecord(.init(originalDriver: device.driver, originalOverride: device.driverOverride),
                                for: device.address)
        }
        do throws(BusError) {
            try accessMarkers.grant(device, driver: driver)
            try move(device, to: driver.rawValue, override: driver.rawValue)
        } catch {
            if existing == nil {
                try? accessMarkers.revoke(device)
                try? store.setRecord(nil, for: device.address)
            }
            throw error
        }
        let after = try bus.device(at: device.address)
        return Report(device: after, steps: steps, alreadyDone: false, node: waitForNode(of: after))
    }

    /// Gives a device back to the driver it had before Modeless bound it (or, if Modeless
    /// has no record, releases it from its user-mode driver and lets the kernel choose).
    ///
    /// Refused, before anything changes, while a process holds the device through its
    /// user-mode node; with `releasing`, a Modeless driver holding it through VFIO is asked
    /// to release it instead (the kernel's device request, which its remove routine answers
    /// by failing its I/O and closing the device), and the unbind completes once it has.
    public func unbind(_ selector: DeviceSelector, releasing: Bool = false, dryRun: Bool = false) throws(BusError) -> Report {
        let device = try bus.resolve(selector)
        let record = try store.record(for: device.address)
        guard record != nil || device.isBoundForUserMode else {
            throw BusError(.notBound,
                           "\(device.address) is not bound to a user-mode driver (driver: \(device.driver ?? "none"))",
                           remedy: "nothing to restore; `modeless bind \(device.address)` hands it to vfio-pci")
        }
        let target = record?.originalDriver
        let override = record?.originalOverride
        if record != nil, device.driver == target, device.driverOverride == override {
            try accessMarkers.revoke(device)
            try store.setRecord(nil, for: device.address)
            return Report(device: device, steps: [], alreadyDone: true, node: nil)
        }
        try checkPermission(device)
        var steps: [String] = []
        if releasing, let drivers = releasableHolders(device) {
            steps += drivers.map { "ask pid \($0.pid) (\($0.command)), which has \($0.node) open, to release it (VFIO device request)" }
        } else {
            try checkNotHeld(device)
        }
        if let target, !bus.isDriverRegistered(target) {
            steps.append("load kernel module \(target)")
            if !dryRun { try loadModule(target, for: target) }
        }
        steps += plannedSteps(device, to: target, override: override)
        if dryRun { return Report(device: device, steps: steps, alreadyDone: false, node: nil) }

        try move(device, to: target, override: override)
        try accessMarkers.revoke(device)
        try store.setRecord(nil, for: device.address)
        return Report(device: try bus.device(at: device.address), steps: steps, alreadyDone: false, node: nil)
    }

    // MARK: Checks

    private func checkNotInfrastructure(_ device: PCIDevice) throws(BusError) {
        guard let role = device.infrastructureRole else { return }
        throw BusError(.infrastructureDevice,
                       "\(device.address) is \(role) (class 0x\(hex(device.classAndSubclass, width: 4))): part of the platform, not a device to drive; taking it from its driver can cut off the devices behind it or the machine's interrupts, timers, IOMMU or memory",
                       remedy: "bind the device you mean (`modeless list` shows them), or pass --force if you really mean \(device.address)")
    }

    /// Refuses while a process has the device's user-mode node open: the kernel's unbind from
    /// vfio-pci would block until that process lets go, and one from uio_pci_generic would pull
    /// the device from under it.
    private func checkNotHeld(_ device: PCIDevice) throws(BusError) {
        let holders = bus.holders(of: device)
        guard !holders.isEmpty else { return }
        let pids = Set(holders.map(\.pid)).sorted().map(String.init).joined(separator: " ")
        throw BusError(.heldByProcess,
                       "\(device.address) is held by a process: \(holders.map(\.description).joined(separator: "; ")); moving it now would wait until the process lets go",
                       remedy: "stop the process first (kill \(pids)), then try again; --force does not override this")
    }

    /// The process names (`comm`) of Modeless's programs, whose drivers answer the kernel's
    /// device request: the command line and the benchmarks it hands `modeless bench` to.
    static let modelessPrograms: Set<String> = ["modeless", "modeless-bench"]

    /// The holders when every one is a Modeless driver holding the device through VFIO, which
    /// answers the kernel's device request by releasing it; nil when there is none, or any
    /// other holder (that one would keep the kernel's unbind waiting).
    private func releasableHolders(_ device: PCIDevice) -> [NodeHolder]? {
        let holders = bus.holders(of: device)
        guard !holders.isEmpty, device.driver == UserModeDriver.vfioPCI.rawValue,
              holders.allSatisfy({ Self.modelessPrograms.contains($0.command) && $0.node.hasPrefix("/dev/vfio/") }) else { return nil }
        return holders
    }

    /// Refuses when a block device of the function carries a partition table or a file system,
    /// RAID, LVM or other signature, or cannot be read to tell.
    private func checkHoldsNoData(_ device: PCIDevice) throws(BusError) {
        var found: [String] = []
        for case .blockDevice(let name, _, _, _) in device.kernelUses {
            let path = "\(bus.devRoot)/\(name)"
            do throws(SystemError) {
                if let signature = try BlockSignature.probe(path) { found.append("\(name) holds \(signature)") }
            } catch {
                throw BusError(.systemFailure, "cannot tell whether \(name) of \(device.address) holds data: \(error)",
                               remedy: "run as root so that \(path) can be read, or bind with --force to take it without looking")
            }
        }
        guard !found.isEmpty else { return }
        throw BusError(.holdsData, "\(device.address): \(found.joined(separator: "; "))",
                       remedy: "a user-mode driver may overwrite it: copy off what you need and wipe it (wipefs -a), or bind with --force to take it anyway")
    }

    private func checkPermission(_ device: PCIDevice) throws(BusError) {
        let attribute = "\(bus.path(of: device.address))/driver_override"
        guard kernel.isWritable(attribute) else {
            throw BusError(.notPermitted, "not permitted to change the driver of \(device.address) (\(attribute) is writable by root only)",
                           remedy: "run the bind as root (sudo modeless ...); the udev rules in udev/ then let the `vfio` group use the device without root")
        }
    }

    private func checkIOMMU(_ device: PCIDevice, companions: Set<PCIAddress>) throws(BusError) {
        guard device.iommuGroup != nil else {
            let why = bus.hasIOMMUGroups ? "\(device.address) is in no IOMMU group" : "no IOMMU is enabled"
            throw BusError(.noIOMMU, "vfio-pci needs an IOMMU, and \(why)",
                           remedy: "enable it on the kernel command line (intel_iommu=on or amd_iommu=on, with iommu=pt) and reboot, or bind with --to uio_pci_generic (no DMA isolation)")
        }
        var blocking: [String] = []
        for peer in device.iommuGroupPeers where !companions.contains(peer) {
            guard let member = try? bus.device(at: peer), let driver = member.driver else { continue }
            let harmless = driver == UserModeDriver.vfioPCI.rawValue || driver == "pci-stub"
                || (member.isBridge && driver == "pcieport")
            if !harmless { blocking.append("\(peer) (\(driver))") }
        }
        if !blocking.isEmpty {
            throw BusError(.iommuGroupNotViable,
                           "IOMMU group \(device.iommuGroup!) of \(device.address) is not viable: \(blocking.joined(separator: ", ")) still on host drivers",
                           remedy: "bind every member of the group to vfio-pci in one call (modeless bind ADDR ADDR…) or unbind them first")
        }
    }

    private func loadModule(_ module: String, for driver: String) throws(BusError) {
        let result = kernel.loadModule(module)
        guard result.status == 0, bus.isDriverRegistered(driver) else {
            let output = result.output.trimmingBlanks()
            throw BusError(.moduleUnavailable,
                           "kernel module \(module) is not available" + (output.isEmpty ? "" : ": \(output)"),
                           remedy: "install the kernel's modules package (linux-modules-extra or linux-image) or build \(module) into the kernel")
        }
    }

    // MARK: Changing the driver

    private func plannedSteps(_ device: PCIDevice, to target: String?, override: String?) -> [String] {
        var steps: [String] = []
        let attribute = "\(bus.path(of: device.address))/driver_override"
        if override != device.driverOverride {
            steps.append(override.map { "write \($0) to \(attribute)" } ?? "clear \(attribute)")
        }
        if let current = device.driver { steps.append("unbind \(device.address) from \(current)") }
        steps.append(target.map { "bind \(device.address) to \($0)" } ?? "let the kernel probe \(device.address) for a driver")
        return steps
    }

    /// Moves a device from its current driver to `target` (nil: whatever the kernel probes),
    /// then checks that it got there; on any failure, puts back the device's previous
    /// driver and override.
    private func move(_ device: PCIDevice, to target: String?, override: String?) throws(BusError) {
        do throws(SystemError) {
            try transition(device.address, from: device.driver, to: target, override: override)
            let now = FileAccess.linkTargetName("\(bus.path(of: device.address))/driver")
            if let target, now != target {
                throw SystemError("bind", "\(device.address) to \(target)", errno: Errno(rawValue: ENODEV))
            }
        } catch {
            let current = FileAccess.linkTargetName("\(bus.path(of: device.address))/driver")
            var restored = true
            do throws(SystemError) {
                try transition(device.address, from: current, to: device.driver, override: device.driverOverride)
            } catch {
                restored = false
            }
            restored = restored && FileAccess.linkTargetName("\(bus.path(of: device.address))/driver") == device.driver
            let state = restored
                ? "the device was left as it was (driver: \(device.driver ?? "none"))"
                : "putting back \(device.driver ?? "no driver") also failed; the device may be without a driver"
            if error.errno == .notPermitted || error.errno == .permissionDenied {
                throw BusError(.notPermitted, "not permitted: \(error); \(state)",
                               remedy: "run as root (sudo modeless ...)")
            }
            throw BusError(.kernelRefused,
                           "the kernel did not move \(device.address) to \(target ?? "a probed driver"): \(error); \(state)",
                           remedy: "`dmesg | tail` shows why the driver refused the device")
        }
    }

    private func transition(_ address: PCIAddress, from current: String?, to target: String?,
                            override: String?) throws(SystemError) {
        let directory = bus.path(of: address)
        try kernel.write(override ?? "\n", to: "\(directory)/driver_override")
        if let current, current != target || target == nil {
            try kernel.write(address.description, to: "\(bus.driversDirectory)/\(current)/unbind")
        } else if current == target {
            return
        }
        if let target {
            try kernel.write(address.description, to: "\(bus.driversDirectory)/\(target)/bind")
        } else {
            try kernel.write(address.description, to: "\(bus.sysfsRoot)/bus/pci/drivers_probe")
        }
    }

    /// Waits up to two seconds for the device's character device to appear (devtmpfs and
    /// udev create it asynchronously after the bind).
    private func waitForNode(of device: PCIDevice) -> String? {
        guard let node = bus.userModeNode(of: device) else { return nil }
        guard bus.sysfsRoot == "/sys" else { return node }
        for _ in 0..<200 where !FileAccess.exists(node) { usleep(10_000) }
        return node
    }
}
