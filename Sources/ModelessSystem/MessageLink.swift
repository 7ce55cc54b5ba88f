/// One way of carrying whole messages to a peer and back: a ``UnixSocket`` or a
/// ``SharedMessageChannel`` beside one.
public protocol MessageLink: AnyObject, Sendable {
    /// Sends `bytes` as one message.
    func send(_ bytes: UnsafeRawBufferPointer) throws(SystemError)
    /// Receives one message into `buffer` and returns its length, 0 when the peer has ended.
    func receive(into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> Int
}

extension UnixSocket: MessageLink {}
