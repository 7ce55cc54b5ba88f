import ArgumentParser

/// `--verify` for the `run` commands: the driver runs under the runtime's `DriverVerifier`,
/// each report is printed as it happens, and the command exits non-zero if there was any
/// (``ModelessServices/HostedWork/makeVerifier(_:)`` and `finishVerification(_:)` do it).
package struct VerifyOption: ParsableArguments {
    @Flag(help: "Check the driver against the kernel's rules (best with --mode kernel-emulation); print each violation and exit 1 if there was any.")
    package var verify = false

    /// No --verify.
    package init() {}
}
