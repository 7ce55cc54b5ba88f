import ModelessBus

/// One opened PCI function, whatever reaches it: VFIO, UIO, the kernel-mode emulation or a
/// device model. Drivers are written against this and ``MMIORegion``, never a backend.
public protocol DeviceAccess: AnyObject, Sendable {
    /// The function's PCI address.
    var address: PCIAddress { get }
    /// `vfio`, `uio`, … for logs.
    var backendName: String { get }
    /// Every BAR, by number (memory BARs mapped, I/O BARs through the backend).
    var regions: [Int: MMIORegion] { get }
    /// The function's configuration space.
    var config: ConfigSpaceAccess { get }
    /// How many vectors the device offers of `kind` (0: none).
    func vectorCount(_ kind: InterruptKind) -> Int
    /// Enables `count` vectors of `kind`, each delivered on its own descriptor.
    func enableInterrupts(_ kind: InterruptKind, count: Int) throws(DeviceError) -> [InterruptVector]
    /// Disables whatever interrupts are enabled and closes their descriptors.
    func disableInterrupts() throws(DeviceError)
    /// Memory the device can reach, `size` bytes rounded up to whole pages.
    func allocateDMA(size: Int) throws(DeviceError) -> DMABuffer
    /// Resets the function, if it supports a reset.
    func reset() throws(DeviceError)
    /// Releases everything: interrupts, DMA buffers and their IOMMU mappings, regions, descriptors.
    func close()
    /// Where the device's removal is announced (the kernel's request to release it, a driver's
    /// report that it stopped answering); `nil` for a backend without one.
    var removal: DeviceRemoval? { get }
}

extension DeviceAccess {
    /// No removal channel: the backend cannot hear the kernel ask for the device.
    public var removal: DeviceRemoval? { nil }

    /// BAR `index`, or ``DeviceError`` `.unsupported` naming the BARs the device has.
    public func region(_ index: Int) throws(DeviceError) -> MMIORegion {
        guard let region = regions[index] else {
            let present = regions.keys.sorted().map { "BAR\($0)" }.joined(separator: ", ")
            throw DeviceError(.unsupported, address, "has no BAR\(index) (it has: \(present.isEmpty ? "none" : present))")
        }
        return region
    }
}
