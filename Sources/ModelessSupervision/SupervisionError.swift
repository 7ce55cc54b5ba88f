/// A supervision failure: a bad configuration, a state file that cannot be used, an instance
/// that cannot be started. The message says what was wrong and what to do.
public struct SupervisionError: Error, CustomStringConvertible, Sendable {
    /// What went wrong and what to do about it, in one sentence a person can act on.
    public let description: String

    /// A failure described by `description`, which names the file, instance or value at fault.
    public init(_ description: String) { self.description = description }
}
