import ModelessLogical
import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// A fresh private container directory for one test (short, to fit a socket path).
func temporaryContainerDirectory() -> ContainerDirectory {
    var template = Array("/tmp/mld-XXXXXX".utf8CString)
    let path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    return ContainerDirectory(path: path)
}

/// Polls `condition` for up to `seconds`.
func eventually(seconds: Double = 10, _ condition: () -> Bool) -> Bool {
    let deadline = monotonicNanoseconds() + UInt64(seconds * 1e9)
    while monotonicNanoseconds() < deadline {
        if condition() { return true }
        usleep(5_000)
    }
    return condition()
}

/// Collects completion outcomes from other threads.
final class Outcomes: @unchecked Sendable {
    private let lock = ConditionLock()
    private var results: [Int: [Result<Void, LogicalDeviceError>]] = [:]

    func record(_ id: Int, _ result: Result<Void, LogicalDeviceError>) {
        lock.withLock { results[id, default: []].append(result) }
    }

    var all: [Int: [Result<Void, LogicalDeviceError>]] { lock.withLock { results } }
    var count: Int { lock.withLock { results.values.reduce(0) { $0 + $1.count } } }
}
