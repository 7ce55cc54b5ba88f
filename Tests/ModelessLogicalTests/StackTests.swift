import ModelessLogical
import ModelessSystem
import Testing

/// Stacks of logical devices across containers: a provider whose request handler consumes
/// other devices, with the originator's parameter chain carrying every level's block.
@Suite("Stacks of logical devices")
struct StackTests {
    /// A device that records its name in its output and forwards the request to each of `below`
    /// (opened lazily, once), copying each answer after its own.
    static func forwarding(_ label: String, to below: [String], in container: LogicalContainer) -> LogicalDeviceHandlers {
        let handles = HandleCache()
        return LogicalDeviceHandlers(request: { context in
            var trail = Array(label.utf8)
            for name in below {
                let handle = try handles.handle(name, in: context.container)
                let next = try context.chain.claimBlock()
                next.requestType = .read
                try next.input.setBytes(context.block.input.bytes)
                try context.container.send(handle, next)
                trail += Array(">(".utf8) + next.output.bytes + Array(")".utf8)
            }
            try context.block.output.setBytes(trail)
        })
    }

    @Test func xConsumesYAndA() throws {
        let directory = temporaryContainerDirectory()
        let top = try LogicalContainer(name: "top", directory: directory)
        let middle = try LogicalContainer(name: "middle", directory: directory)
        let kernel = try LogicalContainer.kernelEmulation(directory: directory)
        defer { [top, middle, kernel].forEach { $0.shutdown() } }
        try middle.createDevice("Y", handlers: Self.forwarding("Y", to: [], in: middle))
        try kernel.createDevice("A", handlers: Self.forwarding("A", to: [], in: kernel))
        try top.createDevice("X", handlers: Self.forwarding("X", to: ["middle/Y", "kernel/A"], in: top))

        let originator = try LogicalContainer(name: "client", directory: directory)
        defer { originator.shutdown() }
        let handle = try originator.open("top/X")
        let chain = try ParameterChain(blocks: 3, inputCapacity: 16, outputCapacity: 64)
        let block = try chain.claimBlock()
        block.requestType = .read
        try originator.send(handle, block)
        #expect(String(decoding: block.output.bytes, as: UTF8.self) == "X>(Y)>(A)")
        #expect(chain.claimedCount == 3)
        #expect([chain[0].deviceName, chain[1].deviceName, chain[2].deviceName] == ["top/X", "middle/Y", "kernel/A"])
    }

    @Test func chainXYAZ() throws {
        let directory = temporaryContainerDirectory()
        let x = try LogicalContainer(name: "x-proc", directory: directory)
        let y = try LogicalContainer(name: "y-proc", directory: directory)
        let kernel = try LogicalContainer.kernelEmulation(directory: directory)
        let z = try LogicalContainer(name: "z-proc", directory: directory)
        defer { [x, y, kernel, z].forEach { $0.shutdown() } }
        try z.createDevice("Z", handlers: Self.forwarding("Z", to: [], in: z))
        try kernel.createDevice("A", handlers: Self.forwarding("A", to: ["z-proc/Z"], in: kernel))
        try y.createDevice("Y", handlers: Self.forwarding("Y", to: ["kernel/A"], in: y))
        try x.createDevice("X", handlers: Self.forwarding("X", to: ["Y"].map { "y-proc/\($0)" }, in: x))

        // The originator is in X's own container: its first hop is a direct call.
        let handle = try x.open("X")
        let chain = try ParameterChain(blocks: 4, inputCapacity: 16, outputCapacity: 64)
        let block = try chain.claimBlock()
        block.requestType = .read
        try x.send(handle, block)
        #expect(String(decoding: block.output.bytes, as: UTF8.self) == "X>(Y>(A>(Z)))")
        #expect((0..<4).map { chain[$0].deviceName } == ["x-proc/X", "y-proc/Y", "kernel/A", "z-proc/Z"])

        // Too short a chain for the stack: the level that runs out fails, and says why.
        let short = try ParameterChain(blocks: 2, inputCapacity: 16, outputCapacity: 64)
        let first = try short.claimBlock()
        first.requestType = .read
        let error = #expect(throws: LogicalDeviceError.self) { try x.send(handle, first) }
        #expect(error?.kind == .chainExhausted)
    }
}

/// Opens each device once per provider and keeps the handle.
final class HandleCache: @unchecked Sendable {
    private let lock = ConditionLock()
    private var handles: [String: LogicalDeviceHandle] = [:]

    func handle(_ name: String, in container: LogicalContainer) throws -> LogicalDeviceHandle {
        try lock.withLock {
            if let handle = handles[name] { return handle }
            let handle = try container.open(name)
            handles[name] = handle
            return handle
        }
    }
}
