/// The kernel emulation's interrupt controller: its mask depth, whether an ISR is running, and
/// the interrupts it latched while masked or busy. Guarded by the controller's lock; kept behind
/// pointers so that raising, latching and delivering allocate nothing, retain nothing and make
/// no exclusivity checks.
///
/// The latched interrupts are a fixed ring in arrival order with at most one entry per line:
/// a line raised again while it waits only adds its count, as a pending interrupt is one bit
/// in a real controller.
final class ControllerState: @unchecked Sendable {
    /// How many lines can be latched at once: the kernel emulation attaches at most this many.
    static let capacity = 256

    private enum Word: Int { case maskDepth, inInterrupt, head, count }
    private let words = UnsafeMutablePointer<Int>.allocate(capacity: 4)
    private let lines = UnsafeMutablePointer<Unmanaged<InterruptAttachment>>.allocate(capacity: ControllerState.capacity)
    private let counts = UnsafeMutablePointer<UInt64>.allocate(capacity: ControllerState.capacity)

    init() { words.initialize(repeating: 0, count: 4) }

    deinit {
        words.deallocate()
        lines.deallocate()
        counts.deallocate()
    }

    var maskDepth: Int {
        get { words[Word.maskDepth.rawValue] }
        set { words[Word.maskDepth.rawValue] = newValue }
    }

    var inInterrupt: Bool {
        get { words[Word.inInterrupt.rawValue] != 0 }
        set { words[Word.inInterrupt.rawValue] = newValue ? 1 : 0 }
    }

    var hasLatched: Bool { words[Word.count.rawValue] > 0 }

    private func slot(_ position: Int) -> Int { (words[Word.head.rawValue] + position) % Self.capacity }

    /// Latches `count` interrupts of `attachment`'s line.
    func latch(_ attachment: InterruptAttachment, _ count: UInt64) {
        let line = Unmanaged.passUnretained(attachment).toOpaque()
        let latched = words[Word.count.rawValue]
        for position in 0..<latched where lines[slot(position)].toOpaque() == line {
            counts[slot(position)] &+= count
            return
        }
        precondition(latched < Self.capacity, "more than \(Self.capacity) interrupt lines latched at once")
        lines[slot(latched)] = Unmanaged.passUnretained(attachment)
        counts[slot(latched)] = count
        words[Word.count.rawValue] = latched + 1
    }

    /// Takes the oldest latched line and its count.
    func takeLatched() -> (Unmanaged<InterruptAttachment>, UInt64)? {
        guard words[Word.count.rawValue] > 0 else { return nil }
        let first = slot(0)
        words[Word.head.rawValue] = (first + 1) % Self.capacity
        words[Word.count.rawValue] -= 1
        return (lines[first], counts[first])
    }

    /// Drops `attachment`'s latched interrupts (it is being detached).
    func forget(_ attachment: InterruptAttachment) {
        let line = Unmanaged.passUnretained(attachment).toOpaque()
        var kept = 0
        let latched = words[Word.count.rawValue]
        for position in 0..<latched where lines[slot(position)].toOpaque() != line {
            lines[slot(kept)] = lines[slot(position)]
            counts[slot(kept)] = counts[slot(position)]
            kept += 1
        }
        words[Word.count.rawValue] = kept
    }
}
