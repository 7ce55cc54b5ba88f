/// Hands out device (IO virtual) addresses below a device's DMA limit, first fit, aligned,
/// and takes them back, merging neighbours.
///
/// Not thread-safe by itself; the owning device serializes calls.
public struct IOVAAllocator: Sendable {
    /// Free ranges, sorted by start, never adjacent.
    public private(set) var free: [Range<UInt64>]

    /// Addresses from `start` up to (not including) `limit`.
    public init(start: UInt64, limit: UInt64) {
        precondition(start < limit, "empty IOVA range")
        free = [start..<limit]
    }

    /// Addresses a device with `bits` address bits can reach, starting above the first MiB
    /// (so that a zero or small bogus address is never valid).
    public init(addressBits bits: Int) {
        precondition((20...64).contains(bits), "DMA address bits must be 20...64")
        self.init(start: 1 << 20, limit: bits == 64 ? UInt64.max : 1 << UInt64(bits))
    }

    /// A range of `size` bytes aligned to `alignment` (a power of two), or `nil` if none is left.
    public mutating func allocate(size: UInt64, alignment: UInt64) -> UInt64? {
        precondition(size > 0 && alignment > 0 && alignment & (alignment - 1) == 0)
        for (index, range) in free.enumerated() {
            let start = (range.lowerBound + alignment - 1) & ~(alignment - 1)
            guard start >= range.lowerBound, start <= range.upperBound, range.upperBound - start >= size else { continue }
            var replacement: [Range<UInt64>] = []
            if start > range.lowerBound { replacement.append(range.lowerBound..<start) }
            if start + size < range.upperBound { replacement.append((start + size)..<range.upperBound) }
            free.replaceSubrange(index...index, with: replacement)
            return start
        }
        return nil
    }

    /// Gives up every free address outside `window` (addresses already handed out stay
    /// valid and are returned as usual).
    public mutating func restrict(to window: Range<UInt64>) {
        free = free.compactMap { range in
            let clamped = range.clamped(to: window)
            return clamped.isEmpty ? nil : clamped
        }
    }

    /// Returns a range handed out by ``allocate(size:alignment:)``.
    public mutating func release(_ address: UInt64, size: UInt64) {
        var range = address..<(address + size)
        let index = free.firstIndex { $0.lowerBound >= range.upperBound } ?? free.endIndex
        precondition(index == free.startIndex || free[index - 1].upperBound <= range.lowerBound, "IOVA released twice")
        var lower = index
        if index > free.startIndex, free[index - 1].upperBound == range.lowerBound {
            lower = index - 1
            range = free[lower].lowerBound..<range.upperBound
        }
        var upper = index
        if index < free.endIndex, free[index].lowerBound == range.upperBound {
            range = range.lowerBound..<free[index].upperBound
            upper = index + 1
        }
        free.replaceSubrange(lower..<upper, with: [range])
    }
}

extension Range where Bound == UInt64 {
    /// How many addresses the range holds (`count` would overflow `Int` for the widest ranges).
    var byteCount: UInt64 { upperBound - lowerBound }
}
