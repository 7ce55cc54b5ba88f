/// Identifies one open of a logical device: every successful open gets a new one, even by the
/// same code for the same device. Providers receive it in every handler call, to track each
/// consumer's outstanding work and clean up after it.
public struct ConsumerID: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt64

    public init(rawValue: UInt64) { self.rawValue = rawValue }

    public var description: String { "consumer \(rawValue)" }
}

/// The kind of a request, in its parameter block's header. Read, write and control have
/// layouts every container knows; a non-standard request's areas mean what its provider and
/// consumer agree, and it carries a Swift payload that needs a ``RequestMarshaller`` to cross
/// containers.
public enum RequestType: UInt16, Sendable, CaseIterable {
    case read = 1
    case write = 2
    case control = 3
    case nonStandard = 4
}
