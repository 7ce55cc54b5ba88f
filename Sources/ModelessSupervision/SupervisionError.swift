/// A supervision failure: a bad configuration, a state file that cannot be used, an instance
/// that cannot be started. The message says what was wrong and what to do.
public struct SupervisionError: Error, CustomStringConvertible, Sendable {
    public let description: String

    public init(_ description: String) { self.description = description }
}
