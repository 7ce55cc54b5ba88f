import ModelessSystem
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// One connection from a consumer process, served by whichever of its container's server
/// threads finds it ready (see ``ContainerServer``), one at a time.
///
/// A connection either opens one device (and then carries that open's synchronous requests
/// and its close, on the socket or, once the consumer shares a channel, through shared
/// memory beside it), or attaches to an open made on another connection of the same process (and
/// carries its asynchronous requests), or asks for a listing. Every message is validated; a
/// bad one is answered with an error and the connection goes on.
///
/// Between messages a connection holds only its socket, its shared channel's mapping, and
/// what it has open: no thread and no buffer. ``finish()`` releases all of it.
final class ServerConnection: @unchecked Sendable {
    /// What woke the connection's server: nothing (it was just accepted), its socket (a
    /// message, or the end), or its shared channel's doorbell.
    enum Wake {
        case none
        case socket
        case doorbell
    }

    /// What ``serveArrived(with:woken:)`` left the connection as.
    enum Progress {
        /// Every message that had arrived is answered: wait until the socket is readable.
        case idle
        /// The consumer has gone (or broke the connection): ``finish()`` it.
        case ended
    }

    let socket: UnixSocket
    /// The connection's key in its server's event poll; never reused.
    let token: UInt64
    private let container: LogicalContainer
    private let peer: UnixSocket.PeerCredentials
    /// Where messages come and go once the consumer shared one; nil while on the socket.
    private var channel: SharedMessageChannel?
    /// Descriptors that came with the message being handled (only a share message carries any).
    private var attached: [Int32] = []
    /// A channel agreed on in the message being handled, used from the next message on.
    private var sharedChannel: SharedMessageChannel?
    /// The open this connection made, closed when the connection ends.
    private var opened: ConsumerID?
    /// The open this connection carries requests for (its own, or one it attached to).
    private var serving: ConsumerID?
    /// The buffer and chain of the thread serving the connection now.
    private var scratch: ServingScratch!

    /// Held by the one thread serving the connection (see ``ContainerServer``): its socket and
    /// its channel's doorbell are polled apart, and both may wake a thread at once.
    let busy = Atomic<Bool>(false)
    /// Events taken by threads that found the connection busy, as ``TakenEvent`` bits (the socket,
    /// one-shot, to arm again; the doorbell, edge-triggered, to serve again): set by whoever
    /// took the event, taken by whoever releases ``busy``.
    let takenWhileBusy = Atomic<UInt8>(0)
    /// Threads that have let go of ``busy`` and may still rearm the socket. The connection is
    /// not ended (its descriptor closed, and its number free for the next connection) until
    /// they are done: a rearm that came after would change the next connection's registration.
    let rearming = Atomic<Int>(0)
    /// Whether the shared channel's doorbell is in the poll yet (only the serving thread uses it).
    var doorbellPolled = false

    /// The bits of ``takenWhileBusy``: which of the connection's polled descriptors fired.
    enum TakenEvent {
        static let socket: UInt8 = 1
        static let doorbell: UInt8 = 2
    }

    /// The shared channel's doorbell, once the consumer shared one.
    var doorbellDescriptor: Int32? { channel?.doorbellDescriptor }

    init(container: LogicalContainer, socket: UnixSocket, peer: UnixSocket.PeerCredentials, token: UInt64) {
        self.container = container
        self.socket = socket
        self.peer = peer
        self.token = token
    }

    private var link: any MessageLink { channel ?? socket }
    private var buffer: MessageBuffer { scratch.buffer }

    /// Answers every message that has arrived, using the serving thread's `scratch`. `woken`
    /// says what the event poll found ready: the socket (a message or the end) or the doorbell.
    /// Returns without waiting for more: `.idle` when no message is left (the caller rearms
    /// the socket in its poll), `.ended` when the connection is over.
    func serveArrived(with scratch: ServingScratch, woken: Wake) -> Progress {
        self.scratch = scratch
        defer { self.scratch = nil }
        if let channel {
            switch woken {
            case .socket:
                do {
                    if try channel.socketHasEnded() { return .ended }
                } catch {
                    return .ended  // the consumer broke the channel's protocol on the socket
                }
            case .doorbell, .none:  // the doorbell is polled edge-triggered: nothing to take
                break
            }
        }
        var fresh = woken != .none  // nothing was taken since the wake-up
        while true {
            releaseAttached()  // what came with the last message is not kept
            let received: Int
            do {
                guard let next = try receive(fresh: fresh) else { return .idle }
                received = next
            } catch {
                if error.errno == .messageTooLong {
                    if !reply(error: WireMessage.malformed("a message longer than \(WireMessage.maximumSize) bytes")) { return .ended }
                    fresh = false
                    continue
                }
                return .ended
            }
            fresh = false
            if received == 0 { return .ended }
            let message: WireMessage
            do { message = try WireMessage.parse(UnsafeRawBufferPointer(buffer.bytes), length: received) } catch {
                if !reply(error: error) { return .ended }
                continue
            }
            let length: Int
            do throws(LogicalDeviceError) {
                length = try handle(message)
            } catch {
                length = buffer.buildError(replyKind(message.kind), requestID: message.requestID, consumerID: message.consumerID, error)
            }
            do { try link.send(UnsafeRawBufferPointer(rebasing: buffer.bytes[0..<length])) } catch { return .ended }
            if let sharedChannel {
                channel = sharedChannel  // the reply to the share went on the socket; the rest go here
                self.sharedChannel = nil
            }
        }
    }

    /// Ends the connection: the close handler runs for the device it opened, if still open,
    /// and its socket, shared channel and any descriptor received with a message are released.
    /// Called once, by whoever takes the connection out of its server's table.
    func finish() {
        releaseAttached()
        if let opened { container.closeConsumer(opened) }
        opened = nil
        serving = nil
        channel = nil
        sharedChannel = nil
        socket.close()
    }

    /// The next message if one has arrived (waiting only for a shared channel's spin), and on
    /// the socket any descriptors sent with it; nil if none has. After a wake-up (`fresh`) a
    /// socket is known to be readable and a shared channel does not spin.
    private func receive(fresh: Bool) throws(SystemError) -> Int? {
        if let channel { return try channel.receiveIfArrived(into: buffer.bytes, spinning: !fresh) }
        guard fresh || socket.hasInput else { return nil }
        return try socket.receive(into: buffer.bytes, descriptors: &attached)
    }

    private func releaseAttached() {
        guard !attached.isEmpty else { return }
        for descriptor in attached { Glibc.close(descriptor) }
        attached.removeAll(keepingCapacity: true)
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
            let chain = try ChainCodec.decode(UnsafeRawBufferPointer(rebasing: buffer.payload[0..<message.payloadLength]), reusing: scratch.lastChain)
            scratch.lastChain = chain
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
            guard consumer == opened, channel == nil, sharedChannel == nil else {
                throw WireMessage.malformed("only the connection that opened a device may share a channel, once")
            }
            guard attached.count == 3 else {
                throw WireMessage.malformed("a share message must carry the channel's memory and its two doorbells, not \(attached.count) descriptor(s)")
            }
            guard container.transport.sharedMemory else {
                throw LogicalDeviceError(.requestFailed, "container '\(container.name)' takes requests on its socket only")
            }
            do {
                sharedChannel = try SharedMessageChannel(
                    joining: attached, capacity: WireMessage.maximumSize, socket: socket,
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

/// What a thread serving connections reuses from one message to the next, whichever
/// connection it serves: the message buffer and the last request's chain.
final class ServingScratch {
    let buffer = MessageBuffer()
    /// The last request's chain, reused for the next one of the same shape.
    var lastChain: ParameterChain?
}
