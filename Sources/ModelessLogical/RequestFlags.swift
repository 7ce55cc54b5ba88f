/// What an originator says about a request, in its parameter block's header.
public struct RequestFlags: OptionSet, Sendable, Hashable {
    /// The flags' bits, as in the header.
    public let rawValue: UInt16
    /// The flags whose bits are `rawValue`.
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// The request was sent before, to a provider instance that failed before answering; it
    /// carries the same ``ParameterBlock/requestID``, and a provider that recorded it as
    /// executed answers from its record instead of executing it again.
    public static let reissued = RequestFlags(rawValue: 1 << 0)

    /// Every flag this version knows; a message with others is malformed.
    static let all: RequestFlags = [.reissued]
}
