import Foundation
import Testing

/// The drivers share data with their ISRs and DPCs only through the runtime's primitives
/// (`SpinLock`, `PassiveLock`, `WaitEvent`, `disableInterrupts`) and atomics: a lock of the
/// system's would be invisible to the verifier, and one taken at interrupt level would sleep
/// there. This reads the drivers' sources, so that such a lock cannot come back unnoticed.
@Suite("Driver synchronization vocabulary")
struct DriverSynchronizationTests {
    /// Words that name a system lock, condition or thread primitive.
    static let forbidden = ["ConditionLock", "Mutex<", "Mutex(", "NSLock", "NSCondition", "pthread_", "DispatchSemaphore", "os_unfair_lock"]

    static var driverSources: URL {
        URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Sources/ModelessDrivers")
    }

    @Test("no driver source uses a system lock, condition or pthread call")
    func driversUseOnlyTheRuntimesPrimitives() throws {
        let files = try #require(FileManager.default.enumerator(at: Self.driverSources, includingPropertiesForKeys: nil))
            .compactMap { $0 as? URL }
            .filter { $0.pathExtension == "swift" }
        #expect(files.count > 20, "the drivers' sources were not found at \(Self.driverSources.path)")
        var uses: [String] = []
        for file in files {
            let lines = try String(contentsOf: file, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
            for (number, line) in lines.enumerated() {
                let code = line.split(separator: "//", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
                for word in Self.forbidden where code.contains(word) {
                    uses.append("\(file.lastPathComponent):\(number + 1): \(word)")
                }
            }
        }
        #expect(uses.isEmpty, "drivers must use SpinLock, PassiveLock, WaitEvent or disableInterrupts: \(uses)")
    }
}
