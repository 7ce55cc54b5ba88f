import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// A consumer's open of a device in another container: one connection to that container for
/// the open, close and synchronous requests (the calling thread writes the request and reads
/// the answer itself), and a second one, made at the first asynchronous request, whose wait
/// thread reads answers and calls completion handlers.
final class RemoteHandle: @unchecked Sendable {
    let name: LogicalDeviceName
    let consumerID: ConsumerID
    private let directory: ContainerDirectory
    private let socket: UnixSocket
    private let buffer = MessageBuffer()
    /// Serializes synchronous requests on the connection; guards `terminated` and the counter.
    private let syncLock = ConditionLock()
    private var terminated = false
    private var nextRequest: UInt64 = 1
    private let channelLock = ConditionLock()
    private var channel: AsyncChannel?

    private init(name: LogicalDeviceName, consumerID: ConsumerID, socket: UnixSocket, directory: ContainerDirectory) {
        self.name = name
        self.consumerID = consumerID
        self.socket = socket
        self.directory = directory
    }

    /// Connects to `name`'s container and opens the device there.
    static func open(_ name: LogicalDeviceName, directory: ContainerDirectory) throws(LogicalDeviceError) -> RemoteHandle {
        let socket = try connect(to: name.container, directory: directory)
        let buffer = MessageBuffer()
        let reply = try exchange(
            socket, buffer, length: buffer.build(WireMessage(kind: .open), text: name.device), expecting: .openReply, what: "open \(name)")
        return RemoteHandle(name: name, consumerID: ConsumerID(rawValue: reply.consumerID), socket: socket, directory: directory)
    }

    /// Sends the request in `block` and waits for the answer, copied back into the chain.
    func sendSynchronously(_ block: ParameterBlock, marshaller: (any RequestMarshaller)?) throws(LogicalDeviceError) {
        syncLock.lock()
        defer { syncLock.unlock() }
        guard !terminated else { throw .providerTerminated(name) }
        let requestID = nextRequest
        nextRequest += 1
        let length = try Self.encodeRequest(block, marshaller: marshaller, requestID: requestID, consumerID: consumerID, into: buffer)
        let reply: WireMessage
        do {
            reply = try Self.exchange(socket, buffer, length: length, expecting: .reply, what: "request to \(name)")
        } catch {
            if error.kind == .providerTerminated { terminated = true }
            throw error
        }
        try Self.decodeReply(reply, buffer: buffer, into: block, marshaller: marshaller)
    }

    /// Sends the request in `block`; `deliver` runs once on the wait thread with the outcome.
    func sendAsynchronously(
        _ block: ParameterBlock, marshaller: (any RequestMarshaller)?,
        deliver: @escaping @Sendable (Result<ParameterBlock, LogicalDeviceError>) -> Void
    ) throws(LogicalDeviceError) {
        let channel = try asyncChannel()
        try channel.submit(block, marshaller: marshaller, deliver: deliver)
    }

    /// Closes the device at the provider after the asynchronous requests in flight finish.
    func close() throws(LogicalDeviceError) {
        channelLock.withLock { channel }?.drainAndStop()
        syncLock.lock()
        defer {
            syncLock.unlock()
            socket.shutdown()
            socket.close()
        }
        guard !terminated else { return }  // the provider is gone, and with it the open
        let length = buffer.build(WireMessage(kind: .close, consumerID: consumerID.rawValue), text: "")
        do {
            _ = try Self.exchange(socket, buffer, length: length, expecting: .closeReply, what: "close \(name)")
        } catch where error.kind == .providerTerminated {
            terminated = true
        }
    }

    /// Drops the connections without a close message (the container is shutting down; the
    /// provider runs the close handler when it sees the connection end).
    func abandon() {
        channelLock.withLock { channel }?.abandon()
        socket.shutdown()
    }

    private func asyncChannel() throws(LogicalDeviceError) -> AsyncChannel {
        try channelLock.withLock { () throws(LogicalDeviceError) in
            if let channel { return channel }
            guard !(syncLock.withLock { terminated }) else { throw .providerTerminated(name) }
            let created = try AsyncChannel(handle: self, socket: Self.connect(to: name.container, directory: directory))
            channel = created
            return created
        }
    }

    // MARK: Helpers shared with the asynchronous channel

    static func connect(to container: String, directory: ContainerDirectory) throws(LogicalDeviceError) -> UnixSocket {
        let path = directory.socketPath(container)
        do {
            return try UnixSocket.connect(to: path)
        } catch where error.errno == .noSuchFileOrDirectory || error.errno == .connectionRefused {
            throw LogicalDeviceError(
                .noSuchContainer, "no container '\(container)' is running (nothing listening at \(path)): `modeless devices` lists the running ones")
        } catch where error.errno == .permissionDenied {
            throw LogicalDeviceError(.permissionDenied, "container '\(container)' belongs to another user (\(path))")
        } catch {
            throw LogicalDeviceError(.system, "cannot reach container '\(container)': \(error)")
        }
    }

    /// Sends the first `length` bytes of `buffer`, receives the answer into it and checks it.
    static func exchange(
        _ socket: UnixSocket, _ buffer: MessageBuffer, length: Int, expecting kind: WireMessage.Kind, what: String
    ) throws(LogicalDeviceError) -> WireMessage {
        let received: Int
        do {
            try socket.send(UnsafeRawBufferPointer(rebasing: buffer.bytes[0..<length]))
            received = try socket.receive(into: buffer.bytes)
        } catch where error.errno == .brokenPipe || error.errno == .connectionReset {
            received = 0
        } catch {
            throw LogicalDeviceError(.system, "\(what): \(error)")
        }
        guard received > 0 else {
            throw LogicalDeviceError(.providerTerminated, "\(what): the provider's container has ended; the call was not done")
        }
        let reply = try WireMessage.parse(UnsafeRawBufferPointer(buffer.bytes), length: received)
        if let error = buffer.error(reply) { throw error }
        guard reply.kind == kind else { throw WireMessage.malformed("\(what) was answered with a \(reply.kind) message") }
        return reply
    }

    static func encodeRequest(
        _ block: ParameterBlock, marshaller: (any RequestMarshaller)?, requestID: UInt64, consumerID: ConsumerID, into buffer: MessageBuffer
    ) throws(LogicalDeviceError) -> Int {
        if block.requestType == .nonStandard, let payload = block.requestPayload {
            guard let marshaller else {
                throw LogicalDeviceError(
                    .notMarshallable,
                    "non-standard request code \(block.code) has a payload but no marshaller: register one with register(_:forCode:) in both containers")
            }
            do { try marshaller.marshalRequest(payload, into: block.input) } catch { throw LogicalDeviceError.from(error) }
        }
        let payloadLength = try ChainCodec.encode(block.chain, from: block.index, into: buffer.payload)
        WireMessage(kind: .request, requestID: requestID, consumerID: consumerID.rawValue, payloadLength: payloadLength)
            .writeHeader(into: buffer.bytes)
        return WireMessage.headerSize + payloadLength
    }

    static func decodeReply(
        _ reply: WireMessage, buffer: MessageBuffer, into block: ParameterBlock, marshaller: (any RequestMarshaller)?
    ) throws(LogicalDeviceError) {
        try ChainCodec.copyBack(UnsafeRawBufferPointer(rebasing: buffer.payload[0..<reply.payloadLength]), into: block.chain, at: block.index)
        if block.requestType == .nonStandard, let marshaller {
            do { block.replyPayload = try marshaller.unmarshalReply(from: block.output) } catch { throw LogicalDeviceError.from(error) }
        }
    }
}
