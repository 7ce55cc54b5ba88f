import ModelessSystem

/// The PCI functions the kernel knows, read from sysfs, with names from libpci's ID database.
///
/// `sysfsRoot`, `procRoot` and `devRoot` are `/sys`, `/proc` and `/dev` on a real system; tests
/// point them at a directory tree that stands in for the kernel.
public struct PCIBus: Sendable {
    /// Where sysfs is mounted: devices are read from `sysfsRoot/bus/pci/devices`.
    public let sysfsRoot: String
    /// Where procfs is mounted: mounts, swaps and the processes holding device nodes are read there.
    public let procRoot: String
    /// Where block device nodes are found by name (`/dev/nvme0n1`), to probe them for data.
    public let devRoot: String
    /// The ID database that names vendors, devices and classes.
    public let names: PCINames

    /// The bus as the kernel under the given roots shows it; the defaults are the running system's.
    /// Nothing is read until a device is asked for.
    public init(sysfsRoot: String = "/sys", procRoot: String = "/proc", devRoot: String = "/dev", names: PCINames = .shared) {
        self.sysfsRoot = sysfsRoot
        self.procRoot = procRoot
        self.devRoot = devRoot
        self.names = names
    }

    /// `/sys/bus/pci/devices`.
    public var devicesDirectory: String { "\(sysfsRoot)/bus/pci/devices" }
    /// `/sys/bus/pci/drivers`.
    public var driversDirectory: String { "\(sysfsRoot)/bus/pci/drivers" }

    /// The sysfs directory of a function.
    public func path(of address: PCIAddress) -> String { "\(devicesDirectory)/\(address)" }

    /// The addresses of every PCI function, sorted.
    public func addresses() throws(BusError) -> [PCIAddress] {
        do {
            return try FileAccess.listDirectory(devicesDirectory).compactMap(PCIAddress.init).sorted()
        } catch {
            throw BusError(.systemFailure, "cannot list PCI devices: \(error)",
                           remedy: "check that sysfs is mounted at \(sysfsRoot)")
        }
    }

    /// Every PCI function, sorted by address.
    public func devices() throws(BusError) -> [PCIDevice] {
        let scanner = KernelUseScanner(procRoot: procRoot)
        var result: [PCIDevice] = []
        for address in try addresses() {
            // A function can disappear between listing and reading (hot unplug): skip it.
            if let device = try? read(address, scanner: scanner) { result.append(device) }
        }
        return result
    }

    /// The function at `address`.
    /// - Throws: ``BusError`` `.noSuchDevice` naming the address when there is none.
    public func device(at address: PCIAddress) throws(BusError) -> PCIDevice {
        try read(address, scanner: KernelUseScanner(procRoot: procRoot))
    }

    /// The one function a selector names.
    /// - Throws: ``BusError`` `.noSuchDevice`, or `.ambiguousDevice` listing every match.
    public func resolve(_ selector: DeviceSelector) throws(BusError) -> PCIDevice {
        switch selector {
        case .address(let address):
            return try device(at: address)
        case .ids(let vendor, let deviceID):
            let matches = try devices().filter { $0.vendorID == vendor && $0.deviceID == deviceID }
            if matches.count == 1 { return matches[0] }
            if matches.isEmpty {
                throw BusError(.noSuchDevice, "no PCI device has id \(selector)",
                               remedy: "`modeless list` shows the devices present and their ids")
            }
            let addresses = matches.map(\.address.description).joined(separator: ", ")
            throw BusError(.ambiguousDevice, "\(matches.count) PCI devices have id \(selector): \(addresses)",
                           remedy: "name one of them by its address")
        case .kernelName(let name):
            return try device(withKernelName: name)
        }
    }

    /// The function with a network interface or block device (partitions included) named `name`.
    /// - Throws: ``BusError`` `.noSuchDevice`, saying whether the name exists but is not on a PCI
    ///   function (a virtual interface, a loop device) or does not exist at all.
    public func device(withKernelName name: String) throws(BusError) -> PCIDevice {
        let found = try devices().filter { device in
            device.kernelUses.contains { use in
                switch use {
                case .networkInterface(let interface, _): interface == name
                case .blockDevice(let block, _, _, _): block == name
                }
            }
        }
        if let device = found.first { return device }
        let interface = FileAccess.exists("\(sysfsRoot)/class/net/\(name)")
        let block = FileAccess.exists("\(sysfsRoot)/class/block/\(name)")
        if interface || block {
            throw BusError(.noSuchDevice,
                           "\(interface ? "network interface" : "block device") \(name) is not on a PCI device (it is virtual, or behind a bus Modeless does not bind)",
                           remedy: "name the PCI function itself; `modeless list` shows each one's interfaces (if=) and block devices (blk=)")
        }
        throw BusError(.noSuchDevice, "no network interface or block device is named \(name)",
                       remedy: "`ip link` and `lsblk` show the names; a device already on a user-mode driver has none, so name it by address (`modeless list`)")
    }

    /// Whether a PCI driver is registered (its module loaded or built in).
    public func isDriverRegistered(_ driver: String) -> Bool {
        FileAccess.isDirectory("\(driversDirectory)/\(driver)")
    }

    /// Whether the kernel has any IOMMU groups, that is an IOMMU enabled.
    public var hasIOMMUGroups: Bool {
        !((try? FileAccess.listDirectory("\(sysfsRoot)/kernel/iommu_groups")) ?? []).isEmpty
    }

    /// The character device a user-mode driver gives for the function: `/dev/vfio/GROUP` or `/dev/uioN`.
    public func userModeNode(of device: PCIDevice) -> String? {
        switch device.driver {
        case UserModeDriver.vfioPCI.rawValue:
            return device.iommuGroup.map { "/dev/vfio/\($0)" }
        case UserModeDriver.uioPCIGeneric.rawValue:
            return (try? FileAccess.listDirectory("\(path(of: device.address))/uio"))?.first.map { "/dev/\($0)" }
        default:
            return nil
        }
    }

    /// Every character device through which a user-mode driver's user holds the function:
    /// the VFIO group (`/dev/vfio/GROUP`) and VFIO device (`/dev/vfio/devices/vfioN`) nodes under
    /// vfio-pci, the UIO node (`/dev/uioN`) under uio_pci_generic. Empty on any other driver.
    public func userModeNodes(of device: PCIDevice) -> [String] {
        var nodes = userModeNode(of: device).map { [$0] } ?? []
        if device.driver == UserModeDriver.vfioPCI.rawValue {
            let devices = (try? FileAccess.listDirectory("\(path(of: device.address))/vfio-dev")) ?? []
            nodes += devices.sorted().map { "/dev/vfio/devices/\($0)" }
        }
        return nodes
    }

    /// The processes that have one of the function's user-mode nodes open (``userModeNodes(of:)``),
    /// from the open files in `procRoot`.
    public func holders(of device: PCIDevice) -> [NodeHolder] {
        let nodes = userModeNodes(of: device)
        return nodes.isEmpty ? [] : NodeHolderScanner(procRoot: procRoot).holders(of: Set(nodes))
    }

    private func read(_ address: PCIAddress, scanner: KernelUseScanner) throws(BusError) -> PCIDevice {
        let directory = path(of: address)
        guard FileAccess.isDirectory(directory) else {
            throw BusError(.noSuchDevice, "no PCI device at \(address)",
                           remedy: "`modeless list` shows the devices present")
        }
        func number(_ attribute: String) -> UInt32? {
            FileAccess.readTextIfPresent("\(directory)/\(attribute)").flatMap { UInt32($0.dropFirst(2), radix: 16) }
        }
        let config = PCIConfigSpace(bytes: (try? FileAccess.readBytes("\(directory)/config", limit: 4096)) ?? [])
        guard let vendor = number("vendor").map(UInt16.init(truncatingIfNeeded:)) ?? config.vendorID,
              let deviceID = number("device").map(UInt16.init(truncatingIfNeeded:)) ?? config.deviceID else {
            throw BusError(.noSuchDevice, "PCI device \(address) has no readable identity",
                           remedy: "the device may have been removed; run `modeless list`")
        }
        let subsystemVendor = number("subsystem_vendor").map(UInt16.init(truncatingIfNeeded:)) ?? config.word(at: 0x2C) ?? 0
        let subsystem = number("subsystem_device").map(UInt16.init(truncatingIfNeeded:)) ?? config.word(at: 0x2E) ?? 0
        let classCode = number("class") ?? config.classCode ?? 0
        let revision = number("revision").map(UInt8.init(truncatingIfNeeded:)) ?? config.revision ?? 0

        let group = FileAccess.linkTargetName("\(directory)/iommu_group").flatMap { Int($0) }
        let peers = group.map { group in
            ((try? FileAccess.listDirectory("\(sysfsRoot)/kernel/iommu_groups/\(group)/devices")) ?? [])
                .compactMap(PCIAddress.init).filter { $0 != address }
        } ?? []
        let override = FileAccess.readTextIfPresent("\(directory)/driver_override")
        let numa = FileAccess.readTextIfPresent("\(directory)/numa_node").flatMap { Int($0) }

        return PCIDevice(
            address: address, vendorID: vendor, deviceID: deviceID,
            subsystemVendorID: subsystemVendor, subsystemID: subsystem,
            classCode: classCode, revision: revision,
            vendorName: names.vendor(vendor),
            deviceName: names.device(vendor: vendor, device: deviceID),
            subsystemName: names.subsystem(vendor: vendor, device: deviceID,
                                           subsystemVendor: subsystemVendor, subsystem: subsystem),
            className: names.className(classCode),
            driver: FileAccess.linkTargetName("\(directory)/driver"),
            driverOverride: (override == "(null)" || override?.isEmpty == true) ? nil : override,
            iommuGroup: group, iommuGroupPeers: peers,
            numaNode: (numa ?? -1) >= 0 ? numa : nil,
            bars: PCIBar.parse(resourceFile: FileAccess.readTextIfPresent("\(directory)/resource") ?? ""),
            interrupts: config.interrupts,
            capabilities: config.capabilities + config.extendedCapabilities,
            capabilitiesReadable: config.hasReadableCapabilityList,
            kernelUses: scanner.scan(devicePath: directory))
    }
}
