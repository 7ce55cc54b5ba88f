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
