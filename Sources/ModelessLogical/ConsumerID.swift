/// Identifies one open of a logical device: every successful open gets a new one, even by the
/// same code for the same device. Providers receive it in every handler call, to track each
/// consumer's outstanding work and clean up after it.
public struct ConsumerID: Hashable, Sendable, CustomStringConvertible {
    /// The number, unique within the provider's container while the process runs.
    public let rawValue: UInt64

    /// The consumer id `rawValue`.
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// `consumer N`.
    public var description: String { "consumer \(rawValue)" }
}
