import ModelessDevice
import ModelessDrivers
import ModelessLogical
import ModelessModels
import ModelessRuntime

#if canImport(Glibc)
import Glibc
#endif

/// `modeless serve nvme`: the NVMe driver as the provider of a logical block device per
/// namespace, on a controller bound to vfio-pci or on the NVMe model (its namespace in a file);
/// or, with ublk, serving the kernel directly as `/dev/ublkbN` (ServeNVMeUblk.swift).
package struct NVMeServing: HostedWork {
    /// The controller (as the person named it) or the model; nil names neither (only with the model).
    package var address: String?
    /// The model's namespace file, when the driver runs on the NVMe model.
    package var model: String?
    /// The model's namespace size in 512-byte blocks.
    package var modelBlocks = 8192
    /// The namespace served alone; nil serves every active one.
    package var namespace: UInt32?
    /// The execution mode.
    package var mode: ExecutionMode = .user
    /// How completions are noticed.
    package var irq: NVMeController.Completion = .msix
    /// Serve the namespace to the kernel through ublk, instead of as logical devices, with these
    /// queues (nil: one per CPU), requests in flight per queue (nil: all the controller's I/O
    /// queue gives) and user recovery or not.
    package var ublk: (queues: Int?, queueDepth: Int?, recovery: Bool)?
    /// Where and how the logical devices are served.
    package var host: ProviderHost
    /// Where serving reports.
    package var report: HostReport { host.report }

    /// Serving the controller at `address` (or the model in `model`) through `host`.
    package init(address: String?, model: String?, host: ProviderHost) {
        self.address = address
        self.model = model
        self.host = host
    }

    /// Serves until SIGINT or SIGTERM (or the controller's removal).
    package func run() throws {
        if let ublk { return try runUblk(UblkOptions(queues: ublk.queues, queueDepth: ublk.queueDepth, recovery: ublk.recovery)) }
        TerminationSignals.block()
        if let model {
            try withModeledNVMe(backingFile: model, blocks: modelBlocks) { access, runtime in
                let controller = try NVMeController(device: access, runtime: runtime, completion: irq)
                defer { controller.stop() }
                try serveNamespaces(of: controller)
            }
            return
        }
        try withBoundDevice(address!, mode: mode) { _, access, runtime in
            let controller = try NVMeController(device: access, runtime: runtime, completion: irq)
            defer { controller.stop() }
            // Removed: requests already fail with deviceRemoved; end serving and release the device.
            controller.onRemoval { _ in kill(getpid(), SIGTERM) }
            try serveNamespaces(of: controller)
            if let failure = controller.failure, failure.isDeviceRemoval { throw failure }
        }
    }

    /// Runs `body` with the NVMe model (its namespace in `backingFile`) and a runtime in this
    /// serving's mode.
    func withModeledNVMe(backingFile: String, blocks: Int, _ body: (any DeviceAccess, any DriverRuntime) throws -> Void) throws {
        do {
            let access = try ModeledDevice(try NVMeModel(blocks: blocks, serialNumber: "model-nvme0", backingFile: backingFile))
            defer { access.close() }
            let runtime = try makeRuntime(mode)
            defer { runtime.shutdown() }
            try body(access, runtime)
        } catch let reported as any ReportedFailure {
            throw reported
        } catch {
            printError("\(error)")
            throw HostExit(1)
        }
    }

    /// Serves one logical block device per namespace of `controller` (or only the one
    /// ``namespace`` names) until a termination signal: the first as the host's device (default
    /// blk0), each other namespace N as DEVICE-nN.
    func serveNamespaces(of controller: NVMeController) throws {
        let served: [NVMeController.Namespace]
        if namespace != nil {
            served = [try selectNamespace(namespace, on: controller)]
        } else {
            served = controller.identity.namespaces
            guard !served.isEmpty else {
                printError("the NVMe controller has no active namespace to serve")
                throw HostExit(1)
            }
        }
        let base = host.configuration.device ?? "blk0"
        let providers = try served.map { try NVMeBlockProvider(controller: controller, namespace: $0.identifier) }
        try host.serveDevices(defaultContainer: "nvme") { _ in
            providers.enumerated().map { index, provider in
                (index == 0 ? base : "\(base)-n\(provider.namespace)", provider.handlers)
            }
        }
    }
}
