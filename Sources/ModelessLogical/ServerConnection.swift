import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// One connection from a consumer process, served on its own thread.
///
/// A connection either opens one device (and then carries that open's synchronous requests
/// and its close, on the socket or, once the consumer shares a channel, through shared
/// memory beside it), or attaches to an open made on another connection of the same process (and
/// carries its asynchronous requests), or asks for a listing. Every message is validated; a
/// bad one is answered with an error and the connection goes on.
final class ServerConnection: @unchecked Sendable {
    let socket: UnixSocket
    var thread: SystemThread?
    private let container: LogicalContainer
    private let peer: UnixSocket.PeerCredentials
    private let buffer = MessageBuffer()
    /// Where messages come and go: the socket, then a shared channel if the consumer offers one.
    private var link: any MessageLink
    /// A descriptor that came with the message being handled (only a share message carries one).
    private var attached: Int32?
    /// A channel agreed on in the message being handled, used from the next message on.
    private var sharedChannel: SharedMessageChannel?
    /// The open this connection made, closed when the connection ends.
    private var opened: ConsumerID?
    /// The open this connection carries requests for (its own, or one it attached to).
    private var serving: ConsumerID?
    /// The last request's chain, reused for the next one of the same shape.
    private var lastChain: ParameterChain?

    init(container: LogicalContainer, socket: UnixSocket, peer: UnixSocket.PeerCredentials) {
        self.container = container
        self.socket = socket
        self.peer = peer
        link = socket
    }

    func serve() {
        defer {
            if let descriptor = attached { Glibc.close(descriptor) }
            if let opened { container.closeConsumer(opened) }
            socket.close()
        }
        while true {
            if let descriptor = attached {  // what came with the last message is not kept
                Glibc.close(descriptor)
                attached = nil
            }
            let received: Int
            do { received = try receive() } catch {
                if error.errno == .messageTooLong {
                    if !reply(error: WireMessage.malformed("a message longer than \(WireMessage.maximumSize) bytes")) { return }
                    continue
                }
                return
            }
            if received == 0 { return }
            let message: WireMessage
            do { message = try WireMessage.parse(UnsafeRawBufferPointer(buffer.bytes), length: received) } catch {
                if !reply(error: error) { return }
                continue
            }
            let length: Int
            do throws(LogicalDeviceError) {
                length = try handle(message)
            } catch {
                length = buffer.buildError(replyKind(message.kind), requestID: message.requestID, consumerID: message.consumerID, error)
            }
            do { try link.send(UnsafeRawBufferPointer(rebasing: buffer.bytes[0..<length])) } catch { return }
            if let sharedChannel {
                link = sharedChannel  // the reply to the share went on the socket; the rest go here
                self.sharedChannel = nil
            }
        }
    }

    /// Receives the next message, and on the socket any descriptor sent with it.
    private func receive() throws(SystemError) -> Int {
        guard link === socket else { return try link.receive(into: buffer.bytes) }
        return try socket.receive(into: buffer.bytes, descriptor: &attached)
    }

    /// Handles one message and builds the answer in the buffer; returns its length.
    private func handle(_ message: WireMessage) throws(LogicalDeviceError) -> Int {
        switch message.kind {
        case .open:
            guard opened == nil, serving == nil else { throw WireMessage.malformed("this connection already carries an open device") }
            let device = buffer.text(message)
            try LogicalDeviceName.validate(device, what: "device")
            let (_, consumer) = try container.openLocal(device, processID: peer.processID, connection: ObjectIdentifier(self))
            opened = consumer
            serving = consumer
            return buffer.build(WireMessage(kind: .openReply, consumerID: consumer.rawValue), text: "")
        case .attach:
            guard opened == nil, serving == nil else { throw WireMessage.malformed("this connection already carries an open device") }
            let consumer = ConsumerID(rawValue: message.consumerID)
            guard let record = container.consumerRecord(consumer), record.processID == peer.processID, record.connection != nil else {
                throw LogicalDeviceError(.notOpen, "\(consumer) is not open by this process")
            }
            serving = consumer
            return buffer.build(WireMessage(kind: .attachReply, consumerID: consumer.rawValue), text: "")
        case .request:
            let consumer = try servedConsumer(message)
            guard let record = container.consumerRecord(consumer) else { throw LogicalDeviceError(.notOpen, "\(consumer) is closed") }
            let chain = try ChainCodec.decode(UnsafeRawBufferPointer(rebasing: buffer.payload[0..<message.payloadLength]), reusing: lastChain)
            lastChain = chain
            let block = chain[0]
            guard let type = block.requestType else { throw WireMessage.malformed("the request's block has no request type") }
            let marshaller = type == .nonStandard ? container.lock.withLock({ container.marshallers[block.code] }) : nil
            if type == .nonStandard, let marshaller {
                do { block.requestPayload = try marshaller.unmarshalRequest(from: block.input) } catch { throw LogicalDeviceError.from(error) }
            }
            if let failure = container.invoke(record.device, consumer: consumer, block: block) { throw failure }
            if type == .nonStandard, let marshaller, let payload = block.replyPayload {
                do { try marshaller.marshalReply(payload, into: block.output) } catch { throw LogicalDeviceError.from(error) }
            }
            // The substitute completion: this reply wakes the consumer's waiting thread.
            let payloadLength = try ChainCodec.encode(chain, from: 0, into: buffer.payload)
            WireMessage(kind: .reply, requestID: message.requestID, consumerID: consumer.rawValue, payloadLength: payloadLength)
                .writeHeader(into: buffer.bytes)
            return WireMessage.headerSize + payloadLength
        case .close:
            let consumer = try servedConsumer(message)
            guard consumer == opened else { throw WireMessage.malformed("close must come on the connection that opened the device") }
            container.closeConsumer(consumer)
            opened = nil
            return buffer.build(WireMessage(kind: .closeReply, consumerID: consumer.rawValue), text: "")
        case .list:
            return buffer.build(WireMessage(kind: .listReply), text: ContainerListing(container: container).encoded)
        case .share:
            let consumer = try servedConsumer(message)
            guard consumer == opened, link === socket else {
                throw WireMessage.malformed("only the connection that opened a device may share a channel, once")
            }
            guard let descriptor = attached else { throw WireMessage.malformed("a share message must carry the channel's memory") }
            guard container.transport.sharedMemory else {
                throw LogicalDeviceError(.requestFailed, "container '\(container.name)' takes requests on its socket only")
            }
            do {
                sharedChannel = try SharedMessageChannel(
                    joining: descriptor, capacity: WireMessage.maximumSize, socket: socket,
                    spinNanoseconds: container.transport.spinNanoseconds)
            } catch {
                throw WireMessage.malformed("the shared channel was refused: \(error)")
            }
            return buffer.build(WireMessage(kind: .shareReply, consumerID: consumer.rawValue), text: "")
        case .openReply, .closeReply, .reply, .attachReply, .listReply, .shareReply:
            throw WireMessage.malformed("a \(message.kind) message is an answer, not a call")
        }
    }

    private func servedConsumer(_ message: WireMessage) throws(LogicalDeviceError) -> ConsumerID {
        guard let serving, serving.rawValue == message.consumerID else {
            throw LogicalDeviceError(.notOpen, "consumer \(message.consumerID) is not open on this connection")
        }
        return serving
    }

    private func replyKind(_ kind: WireMessage.Kind) -> WireMessage.Kind {
        switch kind {
        case .open: .openReply
        case .close: .closeReply
        case .attach: .attachReply
        case .list: .listReply
        case .share: .shareReply
        default: .reply
        }
    }

    /// Answers a message that could not be parsed; false if the connection is gone.
    private func reply(error: LogicalDeviceError) -> Bool {
        let length = buffer.buildError(.reply, requestID: 0, consumerID: 0, error)
        do { try link.send(UnsafeRawBufferPointer(rebasing: buffer.bytes[0..<length])) } catch { return false }
        return true
    }
}
