import ModelessSystem

/// The connection that carries one handle's asynchronous requests, and its wait thread.
///
/// This is the seed's asynchronous path between containers: the consumer's request goes to
/// the provider's container, where a substitute completion handler (the server's reply)
/// signals this wait thread when the provider's handler is done; the wait thread then calls
/// the consumer's real completion handler. If the provider's process ends, every request in
/// flight fails with ``LogicalDeviceError/Kind/providerTerminated``, exactly once.
final class AsyncChannel: @unchecked Sendable {
    private struct Pending {
        let block: ParameterBlock
        let marshaller: (any RequestMarshaller)?
        let deliver: @Sendable (Result<ParameterBlock, LogicalDeviceError>) -> Void
    }

    private let name: LogicalDeviceName
    private let consumerID: ConsumerID
    private let socket: UnixSocket
    private let sendBuffer = MessageBuffer()
    private let receiveBuffer = MessageBuffer()
    /// Guards `pending`, the counter and `terminated`; never held while sending, so that the
    /// wait thread can take answers off the socket while a send waits for room on it.
    private let lock = ConditionLock()
    /// Serializes sends (and the send buffer).
    private let sendLock = ConditionLock()
    private var pending: [UInt64: Pending] = [:]
    private var nextRequest: UInt64 = 1
    private var terminated = false
    private var thread: SystemThread?

    init(handle: RemoteHandle, socket: UnixSocket) throws(LogicalDeviceError) {
        self.name = handle.name
        self.consumerID = handle.consumerID
        self.socket = socket
        let length = sendBuffer.build(WireMessage(kind: .attach, consumerID: consumerID.rawValue), text: "")
        do {
            _ = try RemoteHandle.exchange(socket, sendBuffer, length: length, expecting: .attachReply, what: "attach to \(name)")
            thread = try SystemThread(name: "ld-wait") { [self] in waitForReplies() }
        } catch let error as LogicalDeviceError {
            socket.close()
            throw error
        } catch {
            socket.close()
            throw LogicalDeviceError(.system, "cannot start the completion wait thread: \(error)")
        }
    }

    func submit(
        _ block: ParameterBlock, marshaller: (any RequestMarshaller)?,
        deliver: @escaping @Sendable (Result<ParameterBlock, LogicalDeviceError>) -> Void
    ) throws(LogicalDeviceError) {
        sendLock.lock()
        defer { sendLock.unlock() }
        let requestID: UInt64 = try lock.withLock { () throws(LogicalDeviceError) in
            guard !terminated else { throw .providerTerminated(name) }
            defer { nextRequest += 1 }
            return nextRequest
        }
        let length = try RemoteHandle.encodeRequest(
            block, marshaller: marshaller, requestID: requestID, consumerID: consumerID, into: sendBuffer)
        try lock.withLock { () throws(LogicalDeviceError) in
            guard !terminated else { throw .providerTerminated(name) }  // the wait thread has failed what was pending
            pending[requestID] = Pending(block: block, marshaller: marshaller, deliver: deliver)
        }
        do {
            // A provider busy answering earlier requests may leave no room for this one until
            // the wait thread has read some answers: it can, since no lock it needs is held.
            try socket.send(UnsafeRawBufferPointer(rebasing: sendBuffer.bytes[0..<length]))
        } catch {
            // Never sent. If the wait thread has failed it already (the provider ended), its
            // completion ran and this is not an error of the send; otherwise nothing will run it.
            let unsent = lock.withLock {
                let removed = pending.removeValue(forKey: requestID) != nil
                if pending.isEmpty { lock.broadcast() }
                return removed
            }
            guard unsent else { return }
            if error.errno == .brokenPipe || error.errno == .connectionReset { throw .providerTerminated(name) }
            throw LogicalDeviceError(.system, "request to \(name): \(error)")
        }
    }

    /// Waits until no request is in flight, then ends the connection and the wait thread.
    func drainAndStop() {
        lock.withLock { while !pending.isEmpty && !terminated { lock.wait() } }
        abandon()
        thread?.join()
        socket.close()
    }

    /// Ends the connection; requests in flight fail.
    func abandon() { socket.shutdown() }

    private func waitForReplies() {
        while true {
            let received: Int
            do { received = try socket.receive(into: receiveBuffer.bytes) } catch { received = 0 }
            if received == 0 { break }
            let reply: WireMessage
            do {
                reply = try WireMessage.parse(UnsafeRawBufferPointer(receiveBuffer.bytes), length: received)
            } catch {
                continue  // not attributable to a request; the provider broke the protocol
            }
            let taken: Pending? = lock.withLock {
                let entry = pending.removeValue(forKey: reply.requestID)
                if pending.isEmpty { lock.broadcast() }  // a close waiting to drain may go on
                return entry
            }
            guard let entry = taken else { continue }
            let outcome: Result<ParameterBlock, LogicalDeviceError>
            if let error = receiveBuffer.error(reply) {
                entry.block.setStatus(error.kind)
                outcome = .failure(error)
            } else {
                do throws(LogicalDeviceError) {
                    try RemoteHandle.decodeReply(reply, buffer: receiveBuffer, into: entry.block, marshaller: entry.marshaller)
                    outcome = .success(entry.block)
                } catch {
                    outcome = .failure(error)
                }
            }
            entry.deliver(outcome)
        }
        let failed: [Pending] = lock.withLock {
            terminated = true
            defer { pending.removeAll(); lock.broadcast() }
            return Array(pending.values)
        }
        for entry in failed {
            entry.block.setStatus(.providerTerminated)
            entry.deliver(.failure(.providerTerminated(name)))
        }
    }
}
