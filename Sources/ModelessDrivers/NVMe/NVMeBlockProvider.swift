import ModelessLogical

/// The NVMe driver as the provider of a logical block device: reads, writes, geometry and
/// flush requests (`BlockRequest`'s layout) become commands on one namespace. The
/// controller takes synchronous requests one at a time, so requests from several consumers
/// need no lock here.
public final class NVMeBlockProvider: Sendable {
    /// The started controller the requests go to; the provider does not stop it.
    public let controller: NVMeController
    /// The namespace served.
    public let namespace: UInt32
    private let blockSize: Int
    private let blockCount: UInt64

    /// Serves `namespace` of `controller` (its first active namespace when nil).
    public init(controller: NVMeController, namespace: UInt32? = nil) throws {
        let namespaces = controller.identity?.namespaces ?? []
        guard let served = namespace.map({ id in namespaces.first { $0.identifier == id } }) ?? namespaces.first else {
            let which = namespace.map { "namespace \($0)" } ?? "an active namespace"
            throw LogicalDeviceError(.requestFailed, "the NVMe controller has no \(which) to provide")
        }
        self.controller = controller
        self.namespace = served.identifier
        blockSize = served.blockSize
        blockCount = served.blockCount
    }

    /// The handlers to create the logical device with.
    public var handlers: LogicalDeviceHandlers {
        LogicalDeviceHandlers(request: { context in try self.handle(context.block) })
    }

    /// A request the controller failed because it was removed (or stopped answering) fails
    /// with `LogicalDeviceError.Kind.deviceRemoved`, so that consumers can tell a device
    /// that went away from a request that failed.
    private func handle(_ block: ParameterBlock) throws {
        do {
            try serve(block)
        } catch let failure as NVMeController.Failure where failure.isDeviceRemoval {
            throw LogicalDeviceError(.deviceRemoved, "\(failure); the device is released, and the service resumes once it is back")
        }
    }

    private func serve(_ block: ParameterBlock) throws {
        switch block.requestType {
        case .read:
            let range = try BlockRequest.range(of: block, blockSize: blockSize, totalBlocks: blockCount)
            let data = try controller.read(lba: range.firstBlock, blocks: range.blockCount, namespace: namespace)
            try block.output.setBytes(data)
        case .write:
            let range = try BlockRequest.range(of: block, blockSize: blockSize, totalBlocks: blockCount)
            let data = try block.input.read(at: BlockRequest.dataOffset, count: range.blockCount * blockSize)
            try controller.write(lba: range.firstBlock, data, namespace: namespace)
        case .control where block.code == BlockRequest.geometryCode:
            try BlockRequest.answerGeometry(block, blocks: blockCount, blockSize: blockSize)
        case .control where block.code == BlockRequest.flushCode:
            try controller.flush(namespace: namespace)
        default:
            throw LogicalDeviceError(.requestFailed, "the NVMe block device answers read, write, geometry and flush")
        }
    }
}
