import ModelessSystem
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `modeless export`'s refusals that need no kernel driver: each is a clear message and a
/// documented exit code, with nothing created.
@Suite("modeless export refusals")
struct ExportCommandTests {
    @Test func aWayToExportMustBeNamed() throws {
        let result = try modeless("export", "mem/blk0")
        #expect(result.status == 64, "\(result.output)")
        #expect(result.output.contains("--ublk"), "\(result.output)")
    }

    @Test(arguments: ["0", "4097"])
    func aQueueDepthTheKernelRefusesIsRefusedFirst(_ depth: String) throws {
        let result = try modeless("export", "mem/blk0", "--ublk", "--queue-depth", depth)
        #expect(result.status == 64, "\(result.output)")
        #expect(result.output.contains("1-4096"), "\(result.output)")
    }

    @Test func aMalformedNameIsRefused() throws {
        let result = try modeless("export", "a/b/c", "--ublk")
        #expect(result.status == 64, "\(result.output)")
        #expect(result.output.contains("not a device name"), "\(result.output)")
    }

    @Test func withoutTheKernelDriverTheMessageSaysHowToLoadIt() throws {
        try #require(!FileAccess.exists("/dev/ublk-control"), "this machine has the ublk driver loaded")
        let result = try modeless("export", "mem/blk0", "--ublk")
        #expect(result.status == 69, "\(result.output)")
        #expect(result.output.contains("modprobe ublk_drv"), "\(result.output)")
    }

    /// The instance name `modeless supervise` appends is checked as a container name.
    @Test func aSupervisedInstanceNameIsChecked() throws {
        let result = try modeless("export", "mem/blk0", "--ublk", "--container", "bad name")
        #expect(result.status == 64, "\(result.output)")
        #expect(result.output.contains("--container bad name") && result.output.contains("not a valid container name"), "\(result.output)")
    }
}
