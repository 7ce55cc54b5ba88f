import CModelessShim
import ModelessBus
import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// Kept DMA memory as one process hands it to its successor (``VFIODescriptors/kept``): the
/// memfd behind it and where the device reaches it. The container, which the successor holds
/// too, keeps the IOMMU mapping (and the pages pinned) across the holder's death.
public struct VFIOKeptDMA: Sendable, Equatable {
    /// The memfd (`/memfd:modeless-kept-dma`).
    public var fd: Int32
    /// The device address the memory is mapped at (the start of ``VFIODevice/keptRegion``).
    public var deviceAddress: UInt64
    /// Its size in bytes (whole pages).
    public var size: Int

    /// Kept memory `fd`, `size` bytes mapped at `deviceAddress`.
    public init(fd: Int32, deviceAddress: UInt64, size: Int) {
        self.fd = fd
        self.deviceAddress = deviceAddress
        self.size = size
    }

    /// The device addresses it covers.
    var range: Range<UInt64> { deviceAddress..<(deviceAddress + UInt64(size)) }
}

extension VFIODevice {
    /// The most device addresses the kept region spans (``keptRegion``): 16 MiB.
    public static let keptRegionSize: UInt64 = 16 << 20
    /// The name of a kept buffer's memfd, which a receiver of the handover checks.
    static let keptMemfdName = "modeless-kept-dma"

    /// The kept region for devices that may map DMA in `whole`: its top ``keptRegionSize``
    /// (a quarter of it when that is less), page-aligned.
    static func keptRegion(below whole: Range<UInt64>) -> Range<UInt64> {
        let page = UInt64(DMAPageSize.small)
        let size = min(keptRegionSize, whole.byteCount / 4 & ~(page - 1))
        let start = (whole.upperBound - size) & ~(page - 1)
        return start..<(start + size)
    }

    /// DMA memory kept for a successor (``DeviceAccess/allocateKeptDMA(size:)``): `size`
    /// bytes (rounded up to whole pages, at most ``keptRegion``'s size) of a memfd, mapped at
    /// the start of ``keptRegion``, and handed over with the device's descriptors
    /// (``handoverDescriptors()``). Any mapping left in the kept region (by a predecessor
    /// whose kept memory was not inherited) is removed first. One live kept buffer at a time;
    /// refused on an adopted device until ``takeOver(keepingBusMastering:)``, while the holder
    /// may still use its own kept memory.
    public func allocateKeptDMA(size: Int) throws(DeviceError) -> DMABuffer {
        try checkOpen()
        guard !awaitingTakeover else {
            throw DeviceError(.system, address, "no kept DMA memory can be allocated before the adopted device is taken over "
                              + "(the holder's may still be in use): inherit it with inheritKeptDMA() or allocate after takeOver()")
        }
        guard size > 0 else { throw DeviceError(.outOfRange, address, "kept DMA buffer size must be positive, not \(size)") }
        let length = DMAPageSize.roundUp(size, to: DMAPageSize.small)
        guard UInt64(length) <= keptRegion.byteCount else {
            throw DeviceError(.outOfRange, address, "kept DMA memory holds at most \(keptRegion.byteCount) bytes "
                              + "(the kept region \(hex(keptRegion))), not \(size): carve the rest out of ordinary DMA buffers")
        }
        let iova = keptRegion.lowerBound
        if let live = state.withLock({ $0.buffers.values.first { $0.memfd >= 0 } }) {
            throw DeviceError(.system, address, "a kept DMA buffer of \(live.length) bytes is live in the kept region: "
                              + "free it before allocating another (one at a time per device)")
        }
        let fd = modeless_memfd(Self.keptMemfdName)
        guard fd >= 0 else { throw DeviceError(SystemError("memfd_create", Self.keptMemfdName, errno: .current), address) }
        var base: UnsafeMutableRawPointer?
        do throws(SystemError) {
            if ftruncate(fd, off_t(length)) != 0 { throw SystemError("ftruncate", "\(Self.keptMemfdName) to \(length) bytes", errno: .current) }
            base = try system.map(length, protection: PROT_READ | PROT_WRITE, flags: MAP_SHARED | MAP_POPULATE, fd: fd, offset: 0,
                                  "kept DMA memory")
            try container.unmap(range: keptRegion)  // a predecessor's leftover: the map would fail with EEXIST
            try container.mapDMA(virtualAddress: base!, iova: iova, size: UInt64(length))
        } catch {
            if let base { _ = system.munmap(base, length) }
            _ = system.close(fd)
            throw DeviceError(error, address)
        }
        let buffer = DMABuffer(size: length, deviceAddress: iova, device: address, base: base!) { [weak self] buffer in
            self?.releaseDMA(buffer)
        }
        state.withLock { $0.buffers[iova] = DMARecord(base: base!, length: length, buffer: buffer, memfd: fd) }
        return buffer
    }

    /// The kept buffer the holder of this adopted device handed over
    /// (``DeviceAccess/inheritKeptDMA()``): its memfd mapped into this process, registered at
    /// the device address the holder mapped it at, without mapping it in the IOMMU again (the
    /// shared container has it mapped). Taken once; nil when none was handed over, when it
    /// was closed by ``takeOver(keepingBusMastering:)``, or when the takeover removes every
    /// mapping (the holder's window left no room beside it), in which case the memfd is
    /// closed. A memfd whose size is not the one handed over is refused (and closed).
    public func inheritKeptDMA() throws(DeviceError) -> DMABuffer? {
        try checkOpen()
        guard let kept = state.withLock({ state in defer { state.handedKept = nil }; return state.handedKept }) else { return nil }
        if clearsEverythingAtTakeover {
            _ = system.close(kept.fd)
            return nil
        }
        var status = stat()
        guard fstat(kept.fd, &status) == 0 else {
            let error = SystemError("fstat", "the handed-over kept DMA memory", errno: .current)
            _ = system.close(kept.fd)
            throw DeviceError(error, address)
        }
        guard Int(status.st_size) == kept.size, kept.range.clamped(to: keptRegion) == kept.range else {
            _ = system.close(kept.fd)
            throw DeviceError(.system, address, "the handed-over kept DMA memory is \(status.st_size) bytes at \(hex(kept.range)), "
                              + "expected \(kept.size) bytes inside the kept region \(hex(keptRegion))")
        }
        let base: UnsafeMutableRawPointer
        do {
            base = try system.map(kept.size, protection: PROT_READ | PROT_WRITE, flags: MAP_SHARED | MAP_POPULATE, fd: kept.fd, offset: 0,
                                  "the handed-over kept DMA memory")
        } catch {
            _ = system.close(kept.fd)
            throw DeviceError(error, address)
        }
        let buffer = DMABuffer(size: kept.size, deviceAddress: kept.deviceAddress, device: address, base: base) { [weak self] buffer in
            self?.releaseDMA(buffer)
        }
        let holderMayUse = awaitingTakeover
        state.withLock { $0.buffers[kept.deviceAddress] = DMARecord(base: base, length: kept.size, buffer: buffer, memfd: kept.fd, holderMayUse: holderMayUse) }
        return buffer
    }

    private func hex(_ range: Range<UInt64>) -> String {
        "0x\(String(range.lowerBound, radix: 16))-0x\(String(range.upperBound, radix: 16))"
    }
}
