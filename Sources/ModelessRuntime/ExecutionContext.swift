/// What the calling thread is running, as a kernel's IRQL or lockdep's context: ordinary
/// (passive-level) code, a DPC, or an ISR, each by name. The verifier's reports name it.
public enum ExecutionContext: Sendable, Hashable, CustomStringConvertible {
    /// An ordinary thread: a driver's entry points, its own threads.
    case passive
    /// The DPC of this name is running on the thread.
    case dpc(String)
    /// The ISR of the interrupt attached under this name is running on the thread.
    case isr(String)

    /// `passive level`, `ISR "name"` or `DPC "name"`, as verifier reports name it.
    public var description: String {
        switch self {
        case .passive: "passive level"
        case .dpc(let name): "DPC \"\(name)\""
        case .isr(let name): "ISR \"\(name)\""
        }
    }

    /// The context after a preposition: "at passive level", `in ISR "name"`.
    public var phrase: String { self == .passive ? "at \(self)" : "in \(self)" }

    /// Whether this is an ISR.
    public var isISR: Bool {
        if case .isr = self { return true }
        return false
    }
}

/// The calling thread's ``ExecutionContext``, kept in one thread-local word without allocating
/// or retaining: zero at passive level, else the running attachment's or DPC's address with a
/// tag in its low bits (objects are at least 8-byte aligned). Read back only on the same thread
/// while that ISR or DPC runs, when the object is certainly alive.
struct ContextWord: @unchecked Sendable {
    private let word: ThreadLocalInteger

    init(_ keys: ThreadLocalKeys) { word = keys.make() }

    private static let isrTag = 1
    private static let dpcTag = 2
    private static let tagMask = 7

    /// Marks the thread as running `attachment`'s ISR; returns the word to restore.
    @inline(__always)
    func enter(_ attachment: InterruptAttachment) -> Int {
        swap(Int(bitPattern: Unmanaged.passUnretained(attachment).toOpaque()) | Self.isrTag)
    }

    /// Marks the thread as running `dpc`; returns the word to restore.
    @inline(__always)
    func enter(_ dpc: DeferredProcedureCall) -> Int {
        swap(Int(bitPattern: Unmanaged.passUnretained(dpc).toOpaque()) | Self.dpcTag)
    }

    @inline(__always)
    func restore(_ saved: Int) { word.set(saved) }

    @inline(__always)
    private func swap(_ value: Int) -> Int {
        let saved = word.current
        word.set(value)
        return saved
    }

    /// The context this thread is in.
    var current: ExecutionContext {
        let value = word.current
        guard value != 0, let pointer = UnsafeRawPointer(bitPattern: value & ~Self.tagMask) else { return .passive }
        switch value & Self.tagMask {
        case Self.isrTag: return .isr(Unmanaged<InterruptAttachment>.fromOpaque(pointer).takeUnretainedValue().name)
        default: return .dpc(Unmanaged<DeferredProcedureCall>.fromOpaque(pointer).takeUnretainedValue().name)
        }
    }

    /// Whether this thread is running `dpc`.
    func isRunning(_ dpc: DeferredProcedureCall) -> Bool {
        word.current == Int(bitPattern: Unmanaged.passUnretained(dpc).toOpaque()) | Self.dpcTag
    }

    /// Whether this thread runs an ISR (cheaper than ``current``: no name is read).
    var isInISR: Bool { word.current & Self.tagMask == Self.isrTag }
}
