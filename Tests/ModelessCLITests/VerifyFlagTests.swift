import ModelessSystem
import Testing

/// `modeless run … --verify`: the driver runs under the verifier and the verdict is printed.
@Suite("Command line: --verify")
struct VerifyFlagTests {
    @Test(arguments: ["user", "kernel-emulation"])
    func theEduDriverOnItsModelRunsUnderTheVerifierWithNoReport(_ mode: String) throws {
        let result = try modeless("run", "edu", "--model", "--mode", mode, "--no-realtime", "--verify")
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains("verifier: no reports"), "\(result.output)")
    }
}
