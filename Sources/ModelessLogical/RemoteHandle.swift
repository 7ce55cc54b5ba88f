import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// A consumer's open of a device in another container: one connection to that container for
/// the open, close and synchronous requests (the calling thread writes the request and reads
/// the answer itself, on the socket or, after the share handshake, through a shared-memory
/// channel beside it), and a second one, made at the first asynchronous request, whose wait
/// thread reads answers and calls completion handlers.
final class RemoteHandle: @unchecked Sendable {
    let name: LogicalDeviceName
    let consumerID: ConsumerID
    private let directory: ContainerDirectory
    private let socket: UnixSocket
    /// Where synchronous requests and the close travel: the socket or a shared channel beside it.
    private let link: any MessageLink
    private let buffer: MessageBuffer
    /// Serializes synchronous requests on the connection; guards `terminated` and the counter.
    private let syncLock = ConditionLock()
    private var terminated = false
    private var nextRequest: UInt64 = 1
    private let channelLock = ConditionLock()
    private var channel: AsyncChannel?

    /// Whether synchronous requests travel through shared memory.
    var sharesMemory: Bool { link is SharedMessageChannel }

    private init(name: LogicalDeviceName, consumerID: ConsumerID, socket: UnixSocket, link: any MessageLink,
                 buffer: MessageBuffer, directory: ContainerDirectory) {
        self.name = name
        self.consumerID = consumerID
        self.socket = socket
        self.link = link
        self.buffer = buffer
        self.directory = directory
    }

    /// Connects to `name`'s container and opens the device there; with shared memory in
    /// `transport`, moves the connection's synchronous traffic into a shared channel.
    static func open(_ name: LogicalDeviceName, directory: ContainerDirectory, transport: RequestTransport) throws(LogicalDeviceError) -> RemoteHandle {
        let socket = try connect(to: name.container, directory: directory)
        let buffer = MessageBuffer()
        let reply: WireMessage
        do {
            reply = try exchange(
                socket, buffer, length: buffer.build(WireMessage(kind: .open), text: name.device), expecting: .openReply, what: "open \(name)")
        } catch {
            socket.close()
            throw error
        }
        let consumerID = ConsumerID(rawValue: reply.consumerID)
        var link: any MessageLink = socket
        if transport.sharedMemory {
            do {
                if let channel = try share(socket, buffer, consumerID: consumerID, transport: transport, what: "open \(name)") { link = channel }
            } catch {
                socket.close()  // the provider closes the open when the connection ends
                throw error
            }
        }
        return RemoteHandle(name: name, consumerID: consumerID, socket: socket, link: link, buffer: buffer, directory: directory)
    }

    /// Offers the provider a shared channel for this connection. Returns it if the provider
    /// took it, nil if it declined (the connection stays on the socket).
    private static func share(
        _ socket: UnixSocket, _ buffer: MessageBuffer, consumerID: ConsumerID, transport: RequestTransport, what: String
    ) throws(LogicalDeviceError) -> SharedMessageChannel? {
        let channel: SharedMessageChannel
        let attachment: SharedMessageChannel.Attachment
        do {
            (channel, attachment) = try SharedMessageChannel.create(
                capacity: WireMessage.maximumSize, socket: socket, spinNanoseconds: transport.spinNanoseconds)
        } catch {
            return nil  // no memfd here (or no memory): the socket does the same job
        }
        defer { attachment.close() }
        let length = buffer.build(WireMessage(kind: .share, consumerID: consumerID.rawValue), text: "")
        do {
            try socket.send(UnsafeRawBufferPointer(rebasing: buffer.bytes[0..<length]), attaching: attachment.descriptors)
        } catch {
            throw sendFailure(error, what)
        }
        do {
            _ = try receiveReply(socket, buffer, expecting: .shareReply, what: what)
        } catch where error.kind == .providerTerminated || error.kind == .system {
            throw error
        } catch {
            return nil
        }
        return channel
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
            reply = try Self.exchange(link, buffer, length: length, expecting: .reply, what: "request to \(name)")
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
            _ = try Self.exchange(link, buffer, length: length, expecting: .closeReply, what: "close \(name)")
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
        _ link: any MessageLink, _ buffer: MessageBuffer, length: Int, expecting kind: WireMessage.Kind,
        what: @autoclosure () -> String
    ) throws(LogicalDeviceError) -> WireMessage {
        do {
            try link.send(UnsafeRawBufferPointer(rebasing: buffer.bytes[0..<length]))
        } catch {
            throw sendFailure(error, what())
        }
        return try receiveReply(link, buffer, expecting: kind, what: what())
    }

    /// What a failed send means to the caller: the provider has ended (the peer is gone), or
    /// something else went wrong.
    private static func sendFailure(_ error: SystemError, _ what: String) -> LogicalDeviceError {
        error.errno == .brokenPipe || error.errno == .connectionReset
            ? LogicalDeviceError(.providerTerminated, "\(what): the provider's container has ended; the call was not done")
            : LogicalDeviceError(.system, "\(what): \(error)")
    }

    /// Receives an answer into `buffer` and checks it.
    static func receiveReply(
        _ link: any MessageLink, _ buffer: MessageBuffer, expecting kind: WireMessage.Kind, what: @autoclosure () -> String
    ) throws(LogicalDeviceError) -> WireMessage {
        let received: Int
        do {
            received = try link.receive(into: buffer.bytes)
        } catch where error.errno == .brokenPipe || error.errno == .connectionReset {
            received = 0
        } catch {
            throw LogicalDeviceError(.system, "\(what()): \(error)")
        }
        guard received > 0 else {
            throw LogicalDeviceError(.providerTerminated, "\(what()): the provider's container has ended; the call was not done")
        }
        let reply = try WireMessage.parse(UnsafeRawBufferPointer(buffer.bytes), length: received)
        if let error = buffer.error(reply) { throw error }
        guard reply.kind == kind else { throw WireMessage.malformed("\(what()) was answered with a \(reply.kind) message") }
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
