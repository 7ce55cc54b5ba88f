import ArgumentParser
import ModelessDrivers
import ModelessServices

/// `--namespace N` for every NVMe command: which active namespace the command works on (the
/// first active one when omitted). An ID the controller does not have active is refused,
/// before any I/O, with the list of the active ones.
package struct NVMeNamespaceOption: ParsableArguments {
    @Option(help: "The namespace ID (NSID) to work on; default: the first active namespace (`run nvme` lists them).")
    package var namespace: UInt32?

    package func validate() throws {
        if let namespace, namespace == 0 || namespace == UInt32.max {
            throw ValidationError("--namespace \(namespace) is not a namespace ID: NSIDs run from 1 to 4294967294")
        }
    }

    /// The namespace asked for, on `controller`; prints the refusal and exits 64 when it is not active.
    package func select(on controller: NVMeController) throws -> NVMeController.Namespace {
        try hosting { try ConsoleWork().selectNamespace(namespace, on: controller) }
    }

    /// No --namespace: the first active namespace.
    package init() {}
}
