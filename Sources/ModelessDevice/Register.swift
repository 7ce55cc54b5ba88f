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

    /// The register at byte `offset`, which must be aligned to the register's width.
    public init(_ offset: Int) {
        precondition(offset >= 0 && offset % MemoryLayout<Value>.size == 0,
                     "a \(MemoryLayout<Value>.size * 8)-bit register's offset must be aligned to its width")
        self.offset = offset
    }

    /// The register `index` entries of `stride` bytes after this one (a register array).
    public func advanced(by index: Int, stride: Int) -> Register<Value> { Register(offset + index * stride) }

    /// `0xOFFSET (N bits)`.
    public var description: String { "0x\(String(offset, radix: 16)) (\(MemoryLayout<Value>.size * 8) bits)" }
}

/// What went wrong with a region's accesses, kept by the region so that a driver's datapath
/// can access registers without `try` and still learn, once, that its device went away.
///
/// A non-throwing access (``MMIORegion/load(_:function:)``, ``MMIORegion/store(_:to:function:)``) that cannot
/// reach the device reads as all-ones, as a PCI read of a removed device does, and counts a
/// fault here; the first one's description is kept.
public final class RegionHealth: @unchecked Sendable {
    /// Why an access failed.
    public enum Fault: Sendable, Equatable, CustomStringConvertible {
        /// The region was unmapped (the device was closed) before the access.
        case accessAfterRelease(String)
        /// The backend's access failed (an I/O-port read or write through a file).
        case backend(String)

        /// What failed, in words.
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
    private let observers = Mutex<[@Sendable (Fault, StaticString?) -> Void]>([])
    private let released = Atomic<Bool>(false)
    private let releaseReason = Mutex<String>("")

    /// A region's health with no fault counted.
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

    /// Also calls `observe` for each failed access from now on, with the function that made
    /// the access when it is known (a runtime's verifier); kept beside the observer that
    /// ``observe(_:)`` sets, which does not replace it.
    public func addObserver(_ observe: @escaping @Sendable (Fault, StaticString?) -> Void) {
        observers.withLock { $0.append(observe) }
    }

    /// Marks the region released (its device closed), for backends whose accesses would
    /// otherwise still succeed (software registers): from now on every access fails as
    /// ``Fault/accessAfterRelease(_:)``, naming `reason`.
    public func markReleased(_ reason: String) {
        releaseReason.withLock { $0 = reason }
        released.store(true, ordering: .releasing)
    }

    /// Why the region was released, if ``markReleased(_:)`` was called.
    public var releasedReason: String? {
        released.load(ordering: .acquiring) ? releaseReason.withLock { $0 } : nil
    }

    func record(_ fault: Fault, at site: StaticString? = nil) {
        faults.wrappingAdd(1, ordering: .relaxed)
        first.withLock { if $0 == nil { $0 = fault } }
        observer.withLock { $0 }?(fault)
        for observe in observers.withLock({ $0 }) { observe(fault, site) }
    }
}

extension MMIORegion {
    /// Reads `register`. Never throws: an access the backend cannot make (the region was
    /// released, an I/O-port read failed) reads as all-ones and is counted in ``health``.
    /// A register outside the region is a programming error and traps.
    /// `function` names the caller in a fault's report (``RegionHealth/addObserver(_:)``).
    @inlinable
    public func load<Value>(_ register: Register<Value>, function: StaticString = #function) -> Value {
        Value(truncatingIfNeeded: loadRaw(register.offset, MemoryLayout<Value>.size, function))
    }

    /// Writes `value` to `register`. Never throws: a write the backend cannot make is dropped
    /// and counted in ``health``. A register outside the region is a programming error and traps.
    /// `function` names the caller in a fault's report (``RegionHealth/addObserver(_:)``).
    @inlinable
    public func store<Value>(_ value: Value, to register: Register<Value>, function: StaticString = #function) {
        storeRaw(register.offset, MemoryLayout<Value>.size, UInt64(truncatingIfNeeded: value), function)
    }
}
