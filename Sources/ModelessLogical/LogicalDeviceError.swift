/// Why a logical-device call failed. Every provider and consumer call reports failure as one
/// of these; they cross process boundaries unchanged (kind and message).
public struct LogicalDeviceError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What went wrong, as a stable number that travels between containers.
    public enum Kind: UInt16, Sendable, CaseIterable {
        /// The name is not `container/device` with allowed characters.
        case invalidName = 1
        /// No device of that name in the container.
        case noSuchDevice = 2
        /// No running container of that name.
        case noSuchContainer = 3
        /// A device or container of that name already exists.
        case nameInUse = 4
        /// The device still has consumers (destroy refused).
        case deviceBusy = 5
        /// The handle was closed, or never opened.
        case notOpen = 6
        /// The handle belongs to another container.
        case foreignHandle = 7
        /// The provider's process ended; the request did not complete.
        case providerTerminated = 8
        /// A message between containers broke the protocol; it was rejected.
        case malformedMessage = 9
        /// A non-standard request crossed containers without a marshaller for its code.
        case notMarshallable = 10
        /// The provider's handler refused or failed the request.
        case requestFailed = 11
        /// The parameter chain or a field is larger than allowed.
        case tooLarge = 12
        /// The peer is another user, or a file has unsafe permissions.
        case permissionDenied = 13
        /// A system call failed.
        case system = 14
        /// The parameter chain has no unused block left for a downstream request.
        case chainExhausted = 15
        /// The provider's device was removed (unplugged, unbound, or it stopped answering):
        /// the request was not done, and none will be until the device is back and the
        /// provider restarted (a supervisor does that when the device returns).
        case deviceRemoved = 16
    }

    /// What kind of failure, which a consumer can act on.
    public var kind: Kind
    /// What happened and, where there is one, what to do about it.
    public var message: String

    /// An error of `kind` saying `message`.
    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    /// The message.
    public var description: String { message }

    /// A request to `device` that its provider's end left undone.
    static func providerTerminated(_ device: LogicalDeviceName) -> LogicalDeviceError {
        LogicalDeviceError(.providerTerminated, "the provider of \(device) has ended: the request was not done; reopen the device once it is back")
    }
}
