import ModelessSystem
import Testing

/// `modeless run e1000 ADDR --tap NAME` refusals that need no NIC: each a clear message and
/// exit code 64, given before the device is looked up. The refusals that need the NIC (a name
/// in use, no permission, no clone device, a device that cannot be opened) run in the VM
/// (`TapIntegrationTests`); those of the TAP layer itself in `TapInterfaceTests`.
@Suite("modeless run e1000 --tap refusals")
struct TapCommandTests {
    /// The name is checked when the arguments are parsed, before the device is looked up.
    @Test(arguments: ["bad/name", "sixteen-chars-xx", "", "tap%d"])
    func anInvalidNameIsRefused(_ name: String) throws {
        let result = try modeless("run", "e1000", "0000:ff:1f.7", "--tap", name)
        #expect(result.status == 64, "\(result.output)")
        #expect(result.output.contains("not a valid interface name"), "\(result.output)")
    }

    @Test func tapOptionsNeedTap() throws {
        let result = try modeless("run", "e1000", "0000:ff:1f.7", "--ip", "10.0.0.1", "--persist")
        #expect(result.status == 64 && result.output.contains("go with --tap"), "\(result.output)")
        let noAddress = try modeless("run", "e1000", "0000:ff:1f.7", "--tap", "x0", "--tap-address", "10.0.0.300/24")
        #expect(noAddress.status == 64 && noAddress.output.contains("not an IPv4 address"), "\(noAddress.output)")
    }

    /// `modeless supervise` appends `--container INSTANCE`: the TAP mode takes it, the ping
    /// responder refuses it, naming why.
    @Test func onlyTheTapModeRunsAsASupervisedInstance() throws {
        let responder = try modeless("run", "e1000", "0000:ff:1f.7", "--ip", "10.0.0.1", "--container", "net-0")
        #expect(responder.status == 64 && responder.output.contains("only the TAP mode"), "\(responder.output)")
        let empty = try modeless("run", "e1000", "0000:ff:1f.7", "--tap", "x0", "--container", "")
        #expect(empty.status == 64 && empty.output.contains("instance's name"), "\(empty.output)")
    }
}
