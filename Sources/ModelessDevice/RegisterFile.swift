/// Registers implemented in software: a device model's BAR, or a test double that records
/// every access. ``MMIORegion`` calls it for each access instead of touching memory.
public protocol RegisterFile: AnyObject, Sendable {
    /// Reads `width` bytes (1, 2, 4 or 8) at `offset`; the offset is already bounds-checked.
    func read(at offset: Int, width: Int) -> UInt64
    /// Writes the low `width` bytes of `value` at `offset`.
    func write(at offset: Int, width: Int, value: UInt64)
}
