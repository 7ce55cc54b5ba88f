import ModelessLogical
import ModelessSystem

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
public final class NetworkBlockGateway: @unchecked Sendable {
    public let container: LogicalContainer
    public let device: String
    public let lower: String
    public let ip: [UInt8]
    public let port: UInt16
    /// Parameter blocks per request: one for `net0` and one for each level of the stack
    /// below it (the partition service and the disk under it take two).
    public let chainBlocks: Int
    private let send: @Sendable ([UInt8]) throws -> Void
    private let lock = ConditionLock()
    private var lowerHandle: LogicalDeviceHandle?
    private var ownHandle: LogicalDeviceHandle?
    private var counters = (requests: 0, failures: 0, malformed: 0)

    /// A gateway that will provide `device` in `container` (create it with ``handlers``) and
    /// consumes `lower`, which it opens now; replies go out through `send` (the NIC driver's
    /// transmit).
    public init(container: LogicalContainer, device: String = "net0", lower: String, ip: [UInt8], port: UInt16 = 7470,
                chainBlocks: Int = 4, send: @escaping @Sendable ([UInt8]) throws -> Void) throws(LogicalDeviceError) {
        self.container = container
        self.device = device
        self.lower = lower
        self.ip = ip
        self.port = port
        self.chainBlocks = max(2, chainBlocks)
        self.send = send
        lowerHandle = try container.open(lower)
    }

    /// The handlers to create ``device`` with.
    public var handlers: LogicalDeviceHandlers {
        LogicalDeviceHandlers(request: { [unowned self] context in try self.forward(context) })
    }

    /// Requests served, requests that failed, and datagrams that were not requests.
    public var statistics: (requests: Int, failures: Int, malformed: Int) { lock.withLock { counters } }

    /// Closes the devices it opened (destroy ``device`` afterwards).
    public func stop() {
        let (own, below) = lock.withLock { () -> (LogicalDeviceHandle?, LogicalDeviceHandle?) in
            defer { ownHandle = nil; lowerHandle = nil }
            return (ownHandle, lowerHandle)
        }
        if let own { try? container.close(own) }
        if let below { try? container.close(below) }
    }

    /// `net0`'s request handler: a read or write goes to the device below in the chain's next block.
    private func forward(_ context: RequestContext) throws {
        guard let below = lock.withLock({ lowerHandle }) else { throw LogicalDeviceError(.notOpen, "the gateway is stopped") }
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
            lock.withLock { counters.malformed += 1 }
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
    /// after the gateway).
    private func ownDevice() throws -> LogicalDeviceHandle {
        try lock.withLock { () throws -> LogicalDeviceHandle in
            if let ownHandle { return ownHandle }
            guard lowerHandle != nil else { throw LogicalDeviceError(.notOpen, "the gateway is stopped") }
            let opened = try container.open(device)
            ownHandle = opened
            return opened
        }
    }

    private func reply(to datagram: UDPDatagram, _ message: BlockGatewayMessage, status: UInt16, data: [UInt8] = []) {
        lock.withLock {
            counters.requests += 1
            if status != 0 { counters.failures += 1 }
        }
        var answer = message
        answer.isReply = true
        answer.status = UInt8(truncatingIfNeeded: status)
        answer.data = data
        try? send(datagram.reply(answer.bytes).frame)
    }
}
