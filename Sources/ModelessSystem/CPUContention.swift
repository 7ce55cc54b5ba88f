import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Whether this machine has more runnable threads than CPUs: the kernel's count of runnable
/// threads (`nr_running`, the fourth field of `/proc/loadavg`, "running/total") against the
/// online CPUs, sampled at most once per ``sampleNanoseconds`` for the whole process.
///
/// A waiter that spins is worth it only while its peer is running on another CPU. When no more
/// threads are runnable than there are CPUs, every runnable thread has a CPU of its own, so a
/// peer that is awake is running; beyond that, some runnable thread is waiting for a CPU, the
/// peer may be the one, and a spinning waiter takes CPU time from it or from whoever shares its
/// CPU, and once preempted answers late. Spinning then loses to sleeping, whose wake-up the
/// scheduler favours.
///
/// Without `/proc/loadavg` (no procfs mounted) the machine counts as uncontended.
public enum CPUContention {
    /// How long one sample is used: a read of `/proc/loadavg` costs a few microseconds, so
    /// it is taken at most once a millisecond.
    public static let sampleNanoseconds: UInt64 = 1_000_000

    private static let sampledAt = Atomic<UInt64>(0)
    private static let contended = Atomic<Bool>(false)
    /// `/proc/loadavg`, opened once and read with `pread` from its start; -1 if it cannot be opened.
    private static let loadAverage: Int32 = open("/proc/loadavg", O_RDONLY | O_CLOEXEC)
    private static let cpus = SystemThread.cpuCount

    /// Whether more threads are runnable than there are CPUs, as of the last sample (taken
    /// now if the last one is older than ``sampleNanoseconds``). `now` is the caller's
    /// `monotonicNanoseconds()`. Allocation-free; a system call at most once per sample period.
    public static func isContended(now: UInt64) -> Bool {
        let last = sampledAt.load(ordering: .relaxed)
        if now &- last < sampleNanoseconds, last != 0 { return contended.load(ordering: .relaxed) }
        // One thread samples; the others use the previous sample meanwhile.
        guard sampledAt.compareExchange(expected: last, desired: now, ordering: .relaxed).exchanged else {
            return contended.load(ordering: .relaxed)
        }
        let value = (runnableThreads() ?? 0) > cpus
        contended.store(value, ordering: .relaxed)
        return value
    }

    /// The number of runnable threads in the system now, the reader included (`nr_running`);
    /// nil if `/proc/loadavg` cannot be read or parsed.
    public static func runnableThreads() -> Int? {
        guard loadAverage >= 0 else { return nil }
        return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 128) { buffer -> Int? in
            let length = pread(loadAverage, buffer.baseAddress, buffer.count, 0)
            guard length > 0 else { return nil }
            return parseRunning(UnsafeBufferPointer(rebasing: buffer[0..<length]))
        }
    }

    /// The "running" count of a `/proc/loadavg` line ("0.50 0.40 0.30 3/345 12345"): the
    /// digits before the slash of the fourth field; nil if the line is not of that form.
    public static func parseRunning(_ line: UnsafeBufferPointer<UInt8>) -> Int? {
        var field = 0, index = 0
        while index < line.count, field < 3 {
            if line[index] == UInt8(ascii: " ") { field += 1 }
            index += 1
        }
        guard field == 3 else { return nil }
        var value = 0, digits = 0
        while index < line.count, line[index] >= UInt8(ascii: "0"), line[index] <= UInt8(ascii: "9") {
            value = value &* 10 &+ Int(line[index] &- UInt8(ascii: "0"))
            digits += 1
            index += 1
        }
        guard digits > 0, digits < 10, index < line.count, line[index] == UInt8(ascii: "/") else { return nil }
        return value
    }
}
