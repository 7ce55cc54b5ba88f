import ModelessLogical
import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// Serves a ublk device from a logical block device (any provider of the `BlockRequest`
/// layout: the memory disk, a partition, the NVMe driver), in this process's container.
///
/// Each queue opens the device itself (its own consumer and connection) and sends one
/// synchronous request per ublk request, in parameter chains allocated up front: one per size
/// class (4 KiB, 8 KiB, ... up to the largest request), each with ``chainBlocks`` blocks for
/// the stack below. READ, WRITE and FLUSH map to the layout's read, write and flush;
/// WRITE_ZEROES becomes writes of zeroes; DISCARD is not offered, as the layout has no request
/// for it.
public final class LogicalBlockBackend: UblkBackend {
    /// The logical device served, by its name in `LogicalContainer`.
    public let deviceName: String
    /// The geometry read from the device at ``init(device:container:chainBlocks:)``: its block size
    /// and count, with flush and write-zeroes offered and discard not.
    public let geometry: UblkGeometry
    /// The largest request, in bytes, whose parameter chain fits one logical-device message (at most
    /// 512 KiB, halved until it fits); the kernel is told to send nothing larger.
    public let maximumIOBytes: Int
    /// Parameter blocks per request: this device's and the stack's below it.
    public let chainBlocks: Int
    private let container: LogicalContainer

    /// Opens `device` once to read its geometry and checks the kernel can present it.
    public init(device: String, container: LogicalContainer, chainBlocks: Int = 4) throws(UblkError) {
        self.deviceName = device
        self.container = container
        self.chainBlocks = chainBlocks
        let blocks: UInt64
        let blockSize: Int
        do {
            let handle = try container.open(device)
            defer { try? container.close(handle) }
            let query = try ParameterChain(blocks: chainBlocks, inputCapacity: 0, outputCapacity: 16).claimBlock()
            try BlockRequest.prepareGeometry(query)
            try container.send(handle, query)
            (blocks, blockSize) = try BlockRequest.geometry(of: query)
        } catch {
            throw UblkError(.noSuchDevice, "cannot export \(device): \(error)")
        }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        guard blockSize >= 512, blockSize <= page, blockSize & (blockSize - 1) == 0, blocks > 0 else {
            throw UblkError(
                .invalidArgument,
                "\(device) has \(blocks) blocks of \(blockSize) bytes: the kernel takes a block size that is a power of two from 512 to \(page) bytes, and at least one block")
        }
        geometry = UblkGeometry(blockSize: blockSize, blockCount: blocks, flushes: true, writesZeroes: true, discards: false)
        // The largest request whose chain (data in, data out, in every block) fits one message.
        var size = 512 * 1024
        while size > blockSize, (try? ParameterChain(blocks: chainBlocks, inputCapacity: BlockRequest.dataOffset + size, outputCapacity: size)) == nil {
            size /= 2
        }
        guard (try? ParameterChain(blocks: chainBlocks, inputCapacity: BlockRequest.dataOffset + size, outputCapacity: size)) != nil else {
            throw UblkError(.invalidArgument, "\(chainBlocks) parameter blocks of one \(blockSize)-byte block each do not fit a request: use fewer")
        }
        maximumIOBytes = size
    }

    /// Opens the device again for queue `queue`, with its own consumer, connection and parameter
    /// chains, so that queues never share a lock.
    /// - Throws: ``UblkError/Kind/noSuchDevice`` when the device can no longer be opened.
    public func makeQueueBackend(queue: Int) throws(UblkError) -> any UblkQueueBackend {
        do {
            return try LogicalQueueBackend(
                container: container, device: deviceName, geometry: geometry, maximumIOBytes: maximumIOBytes, chainBlocks: chainBlocks)
        } catch {
            throw UblkError(.noSuchDevice, "queue \(queue) cannot open \(deviceName): \(error)")
        }
    }
}

/// One queue's open of the logical device and its preallocated chains.
final class LogicalQueueBackend: UblkQueueBackend {
    private let container: LogicalContainer
    private let handle: LogicalDeviceHandle
    private let blockSize: Int
    private let maximumIOBytes: Int
    /// Chains by size class, smallest first: (bytes of data they carry, chain).
    private let chains: [(bytes: Int, chain: ParameterChain)]
    private let zeroes: UnsafeMutableRawBufferPointer

    init(container: LogicalContainer, device: String, geometry: UblkGeometry, maximumIOBytes: Int, chainBlocks: Int) throws(LogicalDeviceError) {
        self.container = container
        blockSize = geometry.blockSize
        self.maximumIOBytes = maximumIOBytes
        var classes: [(Int, ParameterChain)] = []
        var size = min(max(geometry.blockSize, 4096), maximumIOBytes)
        while true {
            classes.append((size, try ParameterChain(blocks: chainBlocks, inputCapacity: BlockRequest.dataOffset + size, outputCapacity: size)))
            if size >= maximumIOBytes { break }
            size *= 2
        }
        chains = classes
        handle = try container.open(device)
        zeroes = .allocate(byteCount: maximumIOBytes, alignment: 4096)
        zeroes.initializeMemory(as: UInt8.self, repeating: 0)
    }

    deinit { zeroes.deallocate() }

    func close() { try? container.close(handle) }

    func perform(_ request: UblkRequest, buffer: UnsafeMutableRawBufferPointer) -> Int32 {
        let bytes = request.byteCount
        // A flush's sector is not meaningful (it can be anything): divide, never multiply.
        let first = request.startSector / UInt64(blockSize / 512)
        do {
            switch request.operation {
            case .read:
                guard bytes <= maximumIOBytes, bytes <= buffer.count else { return -Errno.invalidArgument.rawValue }
                let block = try claim(bytes)
                try BlockRequest.prepareRead(block, first: first, count: bytes / blockSize)
                try container.send(handle, block)
                guard block.output.length == bytes else { return -Errno.ioError.rawValue }
                block.output.bytes.withUnsafeBytes { buffer.copyMemory(from: $0) }
                return Int32(bytes)
            case .write:
                guard bytes <= maximumIOBytes, bytes <= buffer.count else { return -Errno.invalidArgument.rawValue }
                try write(first: first, data: UnsafeRawBufferPointer(rebasing: buffer[0..<bytes]))
                return Int32(bytes)
            case .flush:
                let block = try claim(0)
                block.requestType = .control
                block.code = BlockRequest.flushCode
                try block.input.setLength(0)
                try block.output.setLength(0)
                try container.send(handle, block)
                return 0
            case .writeZeroes:
                var done = 0
                while done < bytes {
                    let piece = min(maximumIOBytes, bytes - done)
                    try write(first: first &+ UInt64(done / blockSize), data: UnsafeRawBufferPointer(rebasing: zeroes[0..<piece]))
                    done += piece
                }
                return 0
            case .discard, .writeSame:
                return -Errno.notSupported.rawValue
            }
        } catch {
            return -Errno.ioError.rawValue
        }
    }

    private func write(first: UInt64, data: UnsafeRawBufferPointer) throws(LogicalDeviceError) {
        let block = try claim(data.count)
        try BlockRequest.prepareWrite(block, first: first, data: data, blockSize: blockSize)
        try container.send(handle, block)
    }

    /// Block 0 of the smallest chain that carries `bytes`, reset for a new request.
    private func claim(_ bytes: Int) throws(LogicalDeviceError) -> ParameterBlock {
        let chain = chains.first { $0.bytes >= bytes }?.chain ?? chains[chains.count - 1].chain
        chain.reset()
        return try chain.claimBlock()
    }
}
