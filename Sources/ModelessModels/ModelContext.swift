import ModelessBus
import ModelessDevice
import ModelessSystem

/// What a device model can do to the world: interrupts, DMA and deferred work.
public final class ModelContext: @unchecked Sendable {
    weak var device: ModeledDevice?
    let memory: ModelMemory
    let worker: ModelWorker

    init(memory: ModelMemory, worker: ModelWorker) {
        self.memory = memory
        self.worker = worker
    }

    /// Raises interrupt `vector` (for INTx, asserts the line until ``lowerInterrupt()``).
    public func raiseInterrupt(vector: Int = 0) { device?.raise(vector: vector) }

    /// The kind of interrupt the device's user enabled (as a device sees its MSI and MSI-X
    /// enable bits), nil while none is.
    public var interruptKind: InterruptKind? { device?.enabledInterruptKind }

    /// Deasserts the INTx line.
    public func lowerInterrupt() { device?.lower() }

    /// Whether bus mastering is enabled in the command register (a device may not DMA without it).
    public var busMasterEnabled: Bool { device?.busMasterEnabled ?? false }

    /// Reads `count` bytes of DMA memory at `deviceAddress`, or nil if no buffer is mapped there
    /// (an IOMMU fault on real hardware).
    public func dmaRead(_ deviceAddress: UInt64, count: Int) -> [UInt8]? {
        guard busMasterEnabled, let pointer = memory.resolve(deviceAddress, count: count) else { return nil }
        return [UInt8](UnsafeRawBufferPointer(start: pointer, count: count))
    }

    /// Writes bytes to DMA memory at `deviceAddress`; false if no buffer is mapped there.
    @discardableResult
    public func dmaWrite(_ bytes: [UInt8], to deviceAddress: UInt64) -> Bool {
        guard busMasterEnabled, let pointer = memory.resolve(deviceAddress, count: bytes.count) else { return false }
        bytes.withUnsafeBytes { pointer.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        return true
    }

    /// Runs `work` on the model's worker thread after `delay`.
    public func schedule(after delay: Duration = .zero, _ work: @escaping @Sendable () -> Void) {
        worker.schedule(after: delay, work)
    }
}

/// DMA memory for modeled devices: ordinary memory with device addresses handed out below
/// the model's DMA limit, which the model resolves when it performs DMA.
final class ModelMemory: @unchecked Sendable {
    private let lock = ConditionLock()
    private var allocator: IOVAAllocator
    private var regions: [UInt64: (base: UnsafeMutableRawPointer, size: Int)] = [:]

    init(addressBits: Int) {
        allocator = IOVAAllocator(addressBits: addressBits)
    }

    func allocate(size: Int) -> (UnsafeMutableRawPointer, UInt64, Int)? {
        let length = (size + 4095) / 4096 * 4096
        return lock.withLock {
            guard let address = allocator.allocate(size: UInt64(length), alignment: 4096) else { return nil }
            let base = UnsafeMutableRawPointer.allocate(byteCount: length, alignment: 4096)
            base.initializeMemory(as: UInt8.self, repeating: 0, count: length)
            regions[address] = (base, length)
            return (base, address, length)
        }
    }

    func release(_ address: UInt64) {
        lock.withLock {
            guard let region = regions.removeValue(forKey: address) else { return }
            allocator.release(address, size: UInt64(region.size))
            region.base.deallocate()
        }
    }

    /// The memory behind `count` bytes at `address`, if one buffer holds them all.
    func resolve(_ address: UInt64, count: Int) -> UnsafeMutableRawPointer? {
        lock.withLock {
            for (start, region) in regions where address >= start && address + UInt64(count) <= start + UInt64(region.size) {
                return region.base + Int(address - start)
            }
            return nil
        }
    }

    var liveCount: Int { lock.withLock { regions.count } }

    func releaseAll() {
        lock.withLock {
            for region in regions.values { region.base.deallocate() }
            regions.removeAll()
        }
    }
}

/// One thread running a model's deferred work in deadline order.
final class ModelWorker: @unchecked Sendable {
    private let lock = ConditionLock()
    private var queue: [(deadline: UInt64, order: Int, work: @Sendable () -> Void)] = []
    private var order = 0
    private var stopping = false
    private var thread: SystemThread?

    init() throws(SystemError) {
        thread = try SystemThread(name: "model") { [unowned self] in self.run() }
    }

    func schedule(after delay: Duration, _ work: @escaping @Sendable () -> Void) {
        lock.withLock {
            queue.append((monotonicNanoseconds() + delay.wholeNanoseconds, order, work))
            order += 1
            queue.sort { ($0.deadline, $0.order) < ($1.deadline, $1.order) }
            lock.signal()
        }
    }

    private func run() {
        while true {
            let work: (@Sendable () -> Void)? = lock.withLock {
                while !stopping {
                    guard let first = queue.first else { lock.wait(); continue }
                    let now = monotonicNanoseconds()
                    if first.deadline <= now { return queue.removeFirst().work }
                    _ = lock.wait(nanoseconds: first.deadline - now)
                }
                return nil
            }
            guard let work else { return }
            work()
        }
    }

    func stop() {
        lock.withLock {
            stopping = true
            lock.broadcast()
        }
        thread?.join()
        thread = nil
    }
}
