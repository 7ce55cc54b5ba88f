import ModelessBus
import ModelessSystem

/// A register window reached with pread/pwrite on a file at a base offset: a VFIO region
/// (I/O ports, configuration space) or a sysfs file (UIO's `config` and I/O `resourceN`).
final class RegionFile: @unchecked Sendable {
    let fd: Int32
    let base: Int64
    let name: String
    let system: any SystemCalls

    init(fd: Int32, base: Int64, name: String, system: any SystemCalls) {
        self.fd = fd
        self.base = base
        self.name = name
        self.system = system
    }

    func read(at offset: Int, width: Int, device: PCIAddress) throws(DeviceError) -> UInt64 {
        var value: UInt64 = 0
        do {
            try withUnsafeMutableBytes(of: &value) { (bytes) throws(SystemError) in
                try system.readExactly(fd, into: UnsafeMutableRawBufferPointer(rebasing: bytes[0..<width]),
                                       at: base + Int64(offset), name)
            }
        } catch {
            throw DeviceError(error, device)
        }
        return value  // Little-endian: the low `width` bytes hold the value.
    }

    func write(_ value: UInt64, at offset: Int, width: Int, device: PCIAddress) throws(DeviceError) {
        var value = value
        do {
            try withUnsafeBytes(of: &value) { (bytes) throws(SystemError) in
                try system.writeExactly(fd, from: UnsafeRawBufferPointer(rebasing: bytes[0..<width]),
                                        at: base + Int64(offset), name)
            }
        } catch {
            throw DeviceError(error, device)
        }
    }
}
