/// What a provider supplies when it creates a logical device: its open, close and request
/// handlers. The framework calls them the same way whether the consumer is in the same
/// container or another process.
public struct LogicalDeviceHandlers: Sendable {
    /// Called for every open, with the new consumer's id; throwing refuses the open.
    public var open: @Sendable (ConsumerID) throws -> Void
    /// Called exactly once for every successful open: when the consumer closes, or when its
    /// process ends with the device still open.
    public var close: @Sendable (ConsumerID) -> Void
    /// Called for every request. Read the block's input, fill its output; throw to fail the
    /// request (a ``LogicalDeviceError`` travels as is, any other error as
    /// ``LogicalDeviceError/Kind/requestFailed`` with its description).
    public var request: @Sendable (RequestContext) throws -> Void

    /// Handlers for a device; `open` accepts every consumer and `close` does nothing unless given.
    public init(
        open: @escaping @Sendable (ConsumerID) throws -> Void = { _ in },
        close: @escaping @Sendable (ConsumerID) -> Void = { _ in },
        request: @escaping @Sendable (RequestContext) throws -> Void
    ) {
        self.open = open
        self.close = close
        self.request = request
    }
}

/// One request, as its provider's handler sees it.
public struct RequestContext: Sendable {
    /// Who sent it.
    public let consumer: ConsumerID
    /// Its parameter block: header, input and output.
    public let block: ParameterBlock
    /// The provider's container, through which the handler consumes other devices.
    public let container: LogicalContainer

    /// The chain the block belongs to: claim the next block from it for a request to a device
    /// this provider consumes.
    public var chain: ParameterChain { block.chain }
}

/// Carries a non-standard request's Swift payloads across containers. Register one per
/// request code in both containers (``LogicalContainer/register(_:forCode:)``): the consumer's
/// side marshals the request into the block's input area and unmarshals the reply from the
/// output area; the provider's side does the reverse.
public protocol RequestMarshaller: Sendable {
    /// Consumer side: writes the request's payload into the block's input area.
    func marshalRequest(_ payload: any Sendable, into input: ParameterArea) throws
    /// Provider side: reads the payload back from the input area, for the request handler.
    func unmarshalRequest(from input: ParameterArea) throws -> any Sendable
    /// Provider side: writes the reply's payload into the output area.
    func marshalReply(_ payload: any Sendable, into output: ParameterArea) throws
    /// Consumer side: reads the reply's payload back from the output area.
    func unmarshalReply(from output: ParameterArea) throws -> any Sendable
}

/// A consumer's handle on an open logical device, returned by
/// ``LogicalContainer/open(_:)``. Valid only with the container that opened it, until closed.
public struct LogicalDeviceHandle: Hashable, Sendable, CustomStringConvertible {
    /// The device.
    public let name: LogicalDeviceName
    /// The id the device's provider knows this open by.
    public let consumerID: ConsumerID
    let slot: UInt64
    let owner: ObjectIdentifier

    /// `container/device (consumer N)`.
    public var description: String { "\(name) (\(consumerID))" }
}

extension LogicalDeviceError {
    /// The error a handler's thrown error becomes.
    static func from(_ error: any Error) -> LogicalDeviceError {
        if let error = error as? LogicalDeviceError { return error }
        return LogicalDeviceError(.requestFailed, String(describing: error))
    }
}
