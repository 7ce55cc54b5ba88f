import ModelessSystem

/// A device model's storage: bytes in memory, or a shared mapping of a file so that the
/// contents outlive the process running the model (for restarting a driver process on the
/// same disk). Accesses are bounds-checked.
final class ModelNamespaceStorage: @unchecked Sendable {
    private var memory: [UInt8]
    private let file: SharedMemoryFile?
    let count: Int

    init(bytes: Int, backingFile: String?) throws(SystemError) {
        count = bytes
        if let backingFile {
            file = try SharedMemoryFile(path: backingFile, size: bytes)
            memory = []
        } else {
            file = nil
            memory = [UInt8](repeating: 0, count: bytes)
        }
    }

    func read(at offset: Int, count: Int) -> [UInt8] {
        if let file { return file.read(at: offset, count: count) }
        return Array(memory[offset..<offset + count])
    }

    func write(_ bytes: [UInt8], at offset: Int) {
        if let file { return file.write(bytes, at: offset) }
        memory.replaceSubrange(offset..<offset + bytes.count, with: bytes)
    }
}
