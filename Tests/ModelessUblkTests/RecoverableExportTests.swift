import ModelessUblk
import Testing

/// The record an export keeps in its claim, which a replacement reads to find the ublk device
/// to recover (`RecoverableExport`); the recovery itself runs in the VM
/// (`UblkExportRecoveryTests`).
@Suite("ublk export records")
struct RecoverableExportTests {
    @Test func theRecordedDeviceIsReadBack() {
        #expect(RecoverableExport.recordedDevice("ublk 3 as /dev/ublkb3 by process 42") == 3)
        #expect(RecoverableExport.recordedDevice("ublk 0 as /dev/ublkb0 by process 7") == 0)
    }

    /// An empty record (a clean stop), an export's record from before it named the device
    /// number, or anything else: no device to recover, so a new one is added.
    @Test(arguments: ["", "as /dev/ublkb7 by process 1", "ublk", "ublk x as /dev/ublkbx", "nvme 3"])
    func aRecordWithoutADeviceNamesNone(_ record: String) {
        #expect(RecoverableExport.recordedDevice(record) == nil)
    }
}
