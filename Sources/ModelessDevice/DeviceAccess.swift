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
    /// DMA memory kept for a successor: memory a process that takes the device over after this
    /// one dies finds where the device left it, mapped at the same device address
    /// (``inheritKeptDMA()``), so that the device can go on using it (a controller's queues).
    /// One buffer at a time per device; on VFIO backed by a memfd at a fixed device-address
    /// region that no IOVA window covers (``VFIODevice/keptRegion``), handed over with the
    /// device's descriptors. Default: ``allocateDMA(size:)``.
    func allocateKeptDMA(size: Int) throws(DeviceError) -> DMABuffer
    /// The kept buffer a predecessor handed over with the device (an adopted VFIO device),
    /// mapped into this process at the same device address, its contents as the predecessor
    /// and the device left them; taken once (later calls return nil). It is this device's from
    /// then on: freeing it unmaps it from the IOMMU and releases it, like any DMA buffer. Nil
    /// when none was handed over, or when the takeover must clear every mapping. Callable
    /// before `takeOver()` (the standby maps it ahead). Default: nil.
    func inheritKeptDMA() throws(DeviceError) -> DMABuffer?
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

    /// Ordinary DMA memory: this backend hands nothing to a successor.
    public func allocateKeptDMA(size: Int) throws(DeviceError) -> DMABuffer { try allocateDMA(size: size) }

    /// Nothing: this backend receives nothing from a predecessor.
    public func inheritKeptDMA() throws(DeviceError) -> DMABuffer? { nil }

    /// BAR `index`, or ``DeviceError`` `.unsupported` naming the BARs the device has.
    public func region(_ index: Int) throws(DeviceError) -> MMIORegion {
        guard let region = regions[index] else {
            let present = regions.keys.sorted().map { "BAR\($0)" }.joined(separator: ", ")
            throw DeviceError(.unsupported, address, "has no BAR\(index) (it has: \(present.isEmpty ? "none" : present))")
        }
        return region
    }
}
