import ArgumentParser
import ModelessRuntime

/// `--verify` for the `run` commands: the driver runs under the runtime's ``DriverVerifier``,
/// each report is printed as it happens, and the command exits non-zero if there was any.
package struct VerifyOption: ParsableArguments {
    @Flag(help: "Check the driver against the kernel's rules (best with --mode kernel-emulation); print each violation and exit 1 if there was any.")
    var verify = false

    /// The verifier to give the runtime, when --verify was given.
    package func makeVerifier() -> DriverVerifier? {
        verify ? DriverVerifier(onReport: { printError($0.description) }) : nil
    }

    /// Prints the verdict; exits 1 when the verifier reported anything.
    package func finish(_ verifier: DriverVerifier?) throws {
        guard let verifier else { return }
        let count = verifier.reports.count
        guard count > 0 else {
            printLine("verifier: no reports")
            return
        }
        printError("verifier: \(count) report\(count == 1 ? "" : "s") (rules: \(verifier.rulesReported.map(\.description).joined(separator: ", ")))")
        throw ExitCode(1)
    }

    /// No --verify.
    package init() {}
}
