import Synchronization

/// A device register: its offset in a region and, through `Value`, its width (8, 16, 32 or
/// 64 bits). Drivers name each register once, from the datasheet, and access it by name:
///
/// ```swift
/// enum E1000Register { static let status = Register<UInt32>(0x0008) }
/// let status = registers.load(E1000Register.status)
/// ```
public struct Register<Value: FixedWidthInteger & UnsignedInteger & Sendable>: Sendable, Hashable, CustomStringConvertible {
    /// The byte offset in the region.
    public let offset: Int

    public init(_ offset: Int) {
        precondition(offset >= 0 && offset % MemoryLayout<Value>.size == 0,
                     "a \(MemoryLayout<Value>.size * 8)-bit register's offset must be aligned to its width")
        self.offset = offset
    }

    /// The register `index` entries of `stride` bytes after this one (a register array).
    public func advanced(by index: Int, stride: Int) -> Register<Value> { Register(offset + index * stride) }

    public var description: String { "0x\(String(offset, radix: 16)) (\(MemoryLayout<Value>.size * 8) bits)" }
}

/// What went wrong with a region's accesses, kept by the region so that a driver's datapath
/// can access registers without `try` and still learn, once, that its device went away.
///
/// A non-throwing access (``MMIORegion/load(_:)``, ``MMIORegion/store(_:to:)``) that cannot
/// reach the device reads as all-ones, as a PCI read of a removed device does, and counts a
/// fault here; the first one's description is kept.
public final class RegionHealth: @unchecked Sendable {
    /// Why an access failed.
    public enum Fault: Sendable, Equatable, CustomStringConvertible {
        /// The region was unmapped (the device was closed) before the access.
        case accessAfterRelease(String)
        /// The backend's access failed (an I/O-port read or write through a file).
        case backend(String)

        public var description: String {
            switch self {
            case .accessAfterRelease(let what): "access after release: \(what)"
            case .backend(let what): what
            }
        }
    }

    private let faults = Atomic<Int>(0)
    private let first = Mutex<Fault?>(nil)
    private let observer = Mutex<(@Sendable (Fault) -> Void)?>(nil)

    public init() {}

    /// How many accesses failed.
    public var faultCount: Int { faults.load(ordering: .relaxed) }
    /// The first failed access, if any.
    public var firstFault: Fault? { first.withLock { $0 } }

    /// Calls `observe` for each failed access from now on (a runtime's verifier, a driver's
    /// removal detection); replaces any earlier observer.
    public func observe(_ observe: (@Sendable (Fault) -> Void)?) {
        observer.withLock { $0 = observe }
    }

    func record(_ fault: Fault) {
        faults.wrappingAdd(1, ordering: .relaxed)
        first.withLock { if $0 == nil { $0 = fault } }
        observer.withLock { $0 }?(fault)
    }
}

extension MMIORegion {
    /// Reads `register`. Never throws: an access the backend cannot make (the region was
    /// released, an I/O-port read failed) reads as all-ones and is counted in ``health``.
    /// A register outside the region is a programming error and traps.
    @inlinable
    public func load<Value>(_ register: Register<Value>) -> Value {
        Value(truncatingIfNeeded: loadRaw(register.offset, MemoryLayout<Value>.size))
    }

    /// Writes `value` to `register`. Never throws: a write the backend cannot make is dropped
    /// and counted in ``health``. A register outside the region is a programming error and traps.
    @inlinable
    public func store<Value>(_ value: Value, to register: Register<Value>) {
        storeRaw(register.offset, MemoryLayout<Value>.size, UInt64(truncatingIfNeeded: value))
    }
}
