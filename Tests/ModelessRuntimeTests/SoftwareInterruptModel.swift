import ModelessDevice
import ModelessModels

/// The smallest device model: one register-less BAR and `vectors` MSI vectors, for driving
/// the runtime with interrupts raised from software (`InterruptVector.trigger()`).
final class SoftwareInterruptModel: DeviceModel, @unchecked Sendable {
    let barSizes = [0: 4096]
    let vectorCounts: [InterruptKind: Int]
    var initialConfigSpace: [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 256)
        bytes[0] = 0xf4; bytes[1] = 0x1a; bytes[4] = 0x06  // memory decoding and bus mastering on
        return bytes
    }

    init(vectors: Int = 1) { vectorCounts = [.msi: vectors, .intx: 1] }
    func connect(_ context: ModelContext) {}
    func read(bar: Int, offset: Int, width: Int) -> UInt64 { 0 }
    func write(bar: Int, offset: Int, width: Int, value: UInt64) {}
}
