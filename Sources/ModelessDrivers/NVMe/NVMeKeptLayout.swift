import ModelessDevice

/// How an NVMe controller's kept DMA memory (`DeviceAccess.allocateKeptDMA(size:)`: memory
/// that a successor process inherits at the same device addresses) is laid out: a header page
/// (what the start found, and one ``NVMeQueueRecord`` per queue), the Identify Controller data,
/// then the admin queue and the I/O queues, each ring on its own pages.
///
/// A successor that finds the header whole, written for the same controller and the same
/// choices, and the controller still enabled, resumes the queues instead of resetting the
/// controller (docs/kernel-interfaces.md, "Resuming the controller").
struct NVMeKeptLayout: Equatable {
    let adminEntries: Int
    let ioEntries: Int
    /// I/O queue pairs the memory holds (the controller may have granted fewer).
    let ioQueues: Int

    static let page = NVMeController.pageSize
    static let headerOffset = 0
    static let identifyOffset = page
    static let queuesOffset = 2 * page
    /// Queue records start here in the header page: the admin queue's first, then I/O queue 1, 2, ….
    static let recordsOffset = 1024
    /// Namespaces kept in the header (three words each): a controller with more active
    /// namespaces is not resumed.
    static let namespacesOffset = 128
    static let maximumNamespaces = (recordsOffset - namespacesOffset) / 24

    init(adminEntries: Int, ioEntries: Int, ioQueues: Int) {
        precondition(ioQueues <= NVMeController.maximumIOQueues)
        self.adminEntries = adminEntries
        self.ioEntries = ioEntries
        self.ioQueues = ioQueues
    }

    static func pages(_ bytes: Int) -> Int { (bytes + page - 1) / page * page }

    /// Bytes of one queue pair's rings of `entries`: the submission ring, then the completion ring.
    static func ringBytes(_ entries: Int) -> (submissions: Int, completions: Int) {
        (pages(entries * NVMeCommand.entrySize), pages(entries * NVMeCompletion.entrySize))
    }

    /// Where queue `index` (0: admin; N: I/O queue N) has its rings.
    func rings(_ index: Int) -> (submissions: Int, completions: Int) {
        let admin = Self.ringBytes(adminEntries)
        if index == 0 { return (Self.queuesOffset, Self.queuesOffset + admin.submissions) }
        let io = Self.ringBytes(ioEntries)
        let start = Self.queuesOffset + admin.submissions + admin.completions + (index - 1) * (io.submissions + io.completions)
        return (start, start + io.submissions)
    }

    /// Where queue `index`'s record is.
    static func recordOffset(_ index: Int) -> Int { recordsOffset + index * NVMeQueueRecord.size }

    /// The whole memory's size.
    var size: Int { rings(ioQueues + 1).submissions }
}

/// What the start found and chose, in the kept memory's header: a successor resumes only
/// when its own choices and the controller's capabilities are the same.
struct NVMeKeptHeader: Equatable {
    var layout: NVMeKeptLayout
    var capabilities: UInt64
    var completion: NVMeController.Completion
    var ioQueueLimit: Int?
    /// I/O queue pairs the controller granted and the start created.
    var ioQueuesCreated: Int
    /// Interrupt vectors the start enabled.
    var vectorCount: Int
    var maximumTransfer: Int
    var namespaces: [NVMeController.Namespace]

    /// "MLNVMKP1": written last, cleared first.
    static let magic: UInt64 = 0x3150_4B4D_564E_4C4D
    private static let wordsOffset = 8
    private static let checksumOffset = 112

    private var words: [UInt64] {
        [UInt64(layout.adminEntries), UInt64(layout.ioEntries), UInt64(layout.ioQueues), capabilities,
         UInt64(NVMeController.Completion.allCases.firstIndex(of: completion)!), UInt64(ioQueueLimit ?? 0),
         UInt64(ioQueuesCreated), UInt64(vectorCount), UInt64(maximumTransfer), UInt64(namespaces.count)]
    }

    private static func namespaceWords(_ namespace: NVMeController.Namespace) -> [UInt64] {
        [UInt64(namespace.identifier) | UInt64(namespace.metadataSize) << 32, UInt64(namespace.blockSize), namespace.blockCount]
    }

    /// Writes the header and `identify` (Identify Controller's 4 KiB) into `memory`, the magic last.
    func save(in memory: DMABuffer, identify: [UInt8]) throws(DeviceError) {
        precondition(namespaces.count <= NVMeKeptLayout.maximumNamespaces && identify.count == NVMeIdentifyData.size)
        try memory.store64(0, at: NVMeKeptLayout.headerOffset)
        try memory.write(identify, at: NVMeKeptLayout.identifyOffset)
        let all = words + namespaces.flatMap(Self.namespaceWords)
        for (index, word) in words.enumerated() { try memory.store64(word, at: Self.wordsOffset + 8 * index) }
        for (index, word) in namespaces.flatMap(Self.namespaceWords).enumerated() {
            try memory.store64(word, at: NVMeKeptLayout.namespacesOffset + 8 * index)
        }
        try memory.store64(Self.checksum(all, identify), at: Self.checksumOffset)
        try memory.store64(Self.magic, at: NVMeKeptLayout.headerOffset)
    }

    /// Marks the memory as holding nothing to resume (a clean stop, or a reset under way).
    static func clear(in memory: DMABuffer) throws(DeviceError) {
        try memory.store64(0, at: NVMeKeptLayout.headerOffset)
    }

    /// The header in `memory` with the Identify Controller data, or why there is none to resume from.
    static func load(from memory: DMABuffer) throws(DeviceError) -> Result<(NVMeKeptHeader, [UInt8]), Refusal> {
        guard memory.size >= NVMeKeptLayout.queuesOffset else { return .failure(Refusal("the kept memory is \(memory.size) bytes, smaller than its header")) }
        guard try memory.load64(at: NVMeKeptLayout.headerOffset) == magic else {
            return .failure(Refusal("no saved state (the predecessor stopped cleanly, or was resetting the controller)"))
        }
        var words: [UInt64] = []
        for index in 0..<10 { words.append(try memory.load64(at: wordsOffset + 8 * index)) }
        let count = Int(words[9])
        guard count <= NVMeKeptLayout.maximumNamespaces, Int(words[4]) < NVMeController.Completion.allCases.count,
              words[2] <= UInt64(NVMeController.maximumIOQueues), words[6] <= words[2] else {
            return .failure(Refusal("the saved state's header is out of range"))
        }
        var namespaceWords: [UInt64] = []
        for index in 0..<(3 * count) { namespaceWords.append(try memory.load64(at: NVMeKeptLayout.namespacesOffset + 8 * index)) }
        let identify = try memory.read(NVMeIdentifyData.size, at: NVMeKeptLayout.identifyOffset)
        guard try memory.load64(at: checksumOffset) == checksum(words + namespaceWords, identify) else {
            return .failure(Refusal("the saved state fails its checksum"))
        }
        let namespaces = stride(from: 0, to: namespaceWords.count, by: 3).map { index in
            NVMeController.Namespace(identifier: UInt32(truncatingIfNeeded: namespaceWords[index]), blockSize: Int(namespaceWords[index + 1]),
                                     blockCount: namespaceWords[index + 2], metadataSize: Int(namespaceWords[index] >> 32))
        }
        let header = NVMeKeptHeader(
            layout: NVMeKeptLayout(adminEntries: Int(words[0]), ioEntries: Int(words[1]), ioQueues: Int(words[2])), capabilities: words[3],
            completion: NVMeController.Completion.allCases[Int(words[4])], ioQueueLimit: words[5] == 0 ? nil : Int(words[5]),
            ioQueuesCreated: Int(words[6]), vectorCount: Int(words[7]), maximumTransfer: Int(words[8]), namespaces: namespaces)
        return .success((header, identify))
    }

    /// The header's words and the Identify data's, eight bytes at a time, mixed as the queue
    /// records are (`NVMeQueueRecord.mix`): a few hundred steps on the takeover's path.
    private static func checksum(_ words: [UInt64], _ identify: [UInt8]) -> UInt64 {
        var hash = NVMeQueueRecord.checksumSeed
        for word in words { hash = NVMeQueueRecord.mix(hash, word) }
        identify.withUnsafeBytes { bytes in
            for offset in stride(from: 0, to: bytes.count - 7, by: 8) {
                hash = NVMeQueueRecord.mix(hash, bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
            }
        }
        return hash
    }

    /// Why the kept memory cannot be resumed from.
    struct Refusal: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }
}
