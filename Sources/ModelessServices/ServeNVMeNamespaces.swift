import ArgumentParser
import ModelessCommandLine
import ModelessDrivers
import ModelessLogical

extension ServeNVMe {
    /// Serves one logical block device per namespace of `controller` (or only the one
    /// --namespace names) until a termination signal: the first as --device (default blk0),
    /// each other namespace N as DEVICE-nN.
    func serveNamespaces(of controller: NVMeController) throws {
        let served: [NVMeController.Namespace]
        if namespaceOption.namespace != nil {
            served = [try namespaceOption.select(on: controller)]
        } else {
            served = controller.identity.namespaces
            guard !served.isEmpty else {
                printError("the NVMe controller has no active namespace to serve")
                throw ExitCode(1)
            }
        }
        let base = options.device ?? "blk0"
        let providers = try served.map { try NVMeBlockProvider(controller: controller, namespace: $0.identifier) }
        try options.serveDevices(defaultContainer: "nvme") { _ in
            providers.enumerated().map { index, provider in
                (index == 0 ? base : "\(base)-n\(provider.namespace)", provider.handlers)
            }
        }
    }
}
