import ModelessLogical
import ModelessRuntime

/// The seed's networked example: a network driver as a provider of a logical device, through
/// which block requests arriving over the network flow down a stack of logical devices to a
/// disk and back.
///
/// The gateway provides device `net0` (for example in the kernel emulation's container, with
/// the e1000 driver running there). Its request handler forwards reads and writes, in the same
/// chain, to the block device below (`blocksvc/blk0`: a partition service in another process,
/// itself consuming the NVMe driver's device in a third). Datagrams of the
/// ``BlockGatewayMessage`` protocol to the gateway's address and port become requests to its
/// own `net0` — a consumer in its container like any other — sent asynchronously, so receive
/// processing never waits for the disk; each completion sends the reply datagram.
///
/// ``handle(_:)`` runs where the NIC driver delivers frames (its receive DPC, with interrupts
/// disabled), so the gateway's state is behind a `SpinLock` and nothing there waits.
public final class NetworkBlockGateway: @unchecked Sendable {
    /// The container the gateway provides ``device`` in and opens ``lower`` from.
    public let container: LogicalContainer
    /// The logical device the gateway provides (`net0` by default).
    public let device: String
    /// The block device requests are forwarded to (`blocksvc/blk0`).
    public let lower: String
    /// The IPv4 address (4 bytes) whose datagrams the gateway takes.
    public let ip: [UInt8]
    /// The UDP port whose datagrams the gateway takes (7470 by default).
    public let port: UInt16
    /// Parameter blocks per request: one for `net0` and one for each level of the stack
    /// below it (the partition service and the disk under it take two).
    public let chainBlocks: Int
    private let send: @Sendable ([UInt8]) throws -> Void
    private let state: SpinLock<State>

    private struct State {
        var lowerHandle: LogicalDeviceHandle?
        var ownHandle: LogicalDeviceHandle?
        var requests = 0, failures = 0, malformed = 0, unsentReplies = 0
    }

    /// A gateway that will provide `device` in `container` (create it with ``handlers``) and
    /// consumes `lower`, which it opens now; replies go out through `send` (the NIC driver's
    /// transmit). `runtime` is the NIC driver's.
    public init(container: LogicalContainer, device: String = "net0", lower: String, ip: [UInt8], port: UInt16 = 7470,
                chainBlocks: Int = 4, runtime: any DriverRuntime,
                send: @escaping @Sendable ([UInt8]) throws -> Void) throws(LogicalDeviceError) {
        self.container = container
        self.device = device
        self.lower = lower
        self.ip = ip
        self.port = port
        self.chainBlocks = max(2, chainBlocks)
        self.send = send
        state = runtime.makeSpinLock("block gateway", State(lowerHandle: try container.open(lower)))
    }

    /// The handlers to create ``device`` with.
    public var handlers: LogicalDeviceHandlers {
        LogicalDeviceHandlers(request: { [unowned self] context in try self.forward(context) })
    }

    /// Replies that could not be sent (the NIC's transmit ring was full, or the NIC failed).
    public var unsentReplies: Int { state.withLock { $0.unsentReplies } }

    /// Requests served, requests that failed, and datagrams that were not requests.
    public var statistics: (requests: Int, failures: Int, malformed: Int) {
        state.withLock { ($0.requests, $0.failures, $0.malformed) }
    }

    /// Closes the devices it opened (destroy ``device`` afterwards).
    public func stop() {
        let (own, below) = state.withLock { state -> (LogicalDeviceHandle?, LogicalDeviceHandle?) in
            defer { state.ownHandle = nil; state.lowerHandle = nil }
            return (state.ownHandle, state.lowerHandle)
        }
        // Closing fails only for a handle the container already closed (it was shut down first).
        for handle in [own, below].compactMap({ $0 }) {
            do { try container.close(handle) } catch {}
        }
    }

    /// `net0`'s request handler: a read or write goes to the device below in the chain's next block.
    private func forward(_ context: RequestContext) throws {
        guard let below = state.withLock({ $0.lowerHandle }) else { throw LogicalDeviceError(.notOpen, "the gateway is stopped") }
        let block = context.block
        guard block.requestType == .read || block.requestType == .write else {
            throw LogicalDeviceError(.requestFailed, "\(device) forwards reads and writes only")
        }
        let next = try context.chain.claimBlock()
        next.requestType = block.requestType
        try next.input.copy(from: block.input, count: block.input.length)
        try next.output.setLength(0)
        try container.send(below, next)
        if block.requestType == .read { try block.output.copy(from: next.output, count: next.output.length) }
    }

    /// Handles a received frame; returns false if it is not for the gateway (so that another
    /// handler, such as ARP and ping, can take it).
    @discardableResult
    public func handle(_ frame: [UInt8]) -> Bool {
        guard let datagram = UDPDatagram(frame: frame), datagram.destinationIP == ip, datagram.destinationPort == port else { return false }
        guard let message = BlockGatewayMessage(datagram.payload), !message.isReply else {
            state.withLock { $0.malformed += 1 }
            return true
        }
        do {
            try submit(message, from: datagram)
        } catch {
            reply(to: datagram, message, status: (error as? LogicalDeviceError)?.kind.rawValue ?? LogicalDeviceError.Kind.requestFailed.rawValue)
        }
        return true
    }

    private func submit(_ message: BlockGatewayMessage, from datagram: UDPDatagram) throws {
        let own = try ownDevice()
        let bytes = Int(message.blockCount) * 512
        guard message.blockCount >= 1, bytes <= BlockGatewayMessage.maximumData else {
            throw LogicalDeviceError(.tooLarge, "a request moves 1 to \(BlockGatewayMessage.maximumData / 512) blocks")
        }
        guard message.operation == .read || message.data.count == bytes else {
            throw LogicalDeviceError(.requestFailed, "a write of \(message.blockCount) blocks carries \(bytes) bytes, not \(message.data.count)")
        }
        // The request to net0, net0's request to the device below, and one for each level under that.
        let chain = try ParameterChain(capacities: Array(repeating: .init(input: BlockRequest.dataOffset + bytes, output: bytes),
                                                         count: chainBlocks))
        let block = try chain.claimBlock()
        switch message.operation {
        case .read: try BlockRequest.prepareRead(block, first: message.firstBlock, count: Int(message.blockCount))
        case .write: try BlockRequest.prepareWrite(block, first: message.firstBlock, data: message.data, blockSize: 512)
        }
        try container.send(own, block, context: datagram) { [weak self] result, datagram in
            guard let self else { return }
            switch result {
            case .success(let answered):
                self.reply(to: datagram, message, status: 0, data: message.operation == .read ? answered.output.bytes : [])
            case .failure(let error):
                self.reply(to: datagram, message, status: error.kind.rawValue)
            }
        }
    }

    /// The gateway's own handle on ``device``, opened on first use (the device is created
    /// after the gateway). The open happens outside the spin lock; of two racing opens, the
    /// second is closed again.
    private func ownDevice() throws -> LogicalDeviceHandle {
        let (own, running) = state.withLock { ($0.ownHandle, $0.lowerHandle != nil) }
        if let own { return own }
        guard running else { throw LogicalDeviceError(.notOpen, "the gateway is stopped") }
        let opened = try container.open(device)
        let (kept, spare) = state.withLock { state -> (LogicalDeviceHandle?, LogicalDeviceHandle?) in
            guard state.lowerHandle != nil else { return (nil, opened) }
            if let own = state.ownHandle { return (own, opened) }
            state.ownHandle = opened
            return (opened, nil)
        }
        if let spare { try container.close(spare) }
        guard let kept else { throw LogicalDeviceError(.notOpen, "the gateway is stopped") }
        return kept
    }

    private func reply(to datagram: UDPDatagram, _ message: BlockGatewayMessage, status: UInt16, data: [UInt8] = []) {
        state.withLock { state in
            state.requests += 1
            if status != 0 { state.failures += 1 }
        }
        var answer = message
        answer.isReply = true
        answer.status = UInt8(truncatingIfNeeded: status)
        answer.data = data
        do {
            try send(datagram.reply(answer.bytes).frame)
        } catch {
            state.withLock { $0.unsentReplies += 1 }
        }
    }
}
