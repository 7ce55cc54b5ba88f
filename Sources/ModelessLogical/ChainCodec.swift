/// Carries the blocks of a ``ParameterChain`` from one request's block onwards between
/// containers, and checks every header field of blocks that arrive.
///
/// Encoded form: `UInt16` block count, `UInt16` blocks claimed (counted from the first sent),
/// then the blocks' bytes exactly as they are in the chain.
enum ChainCodec {
    static let prefixSize = 4

    /// Encodes blocks `first...` of `chain` into `buffer`; returns the bytes written.
    static func encode(_ chain: ParameterChain, from first: Int, into buffer: UnsafeMutableRawBufferPointer) throws(LogicalDeviceError) -> Int {
        let start = chain.offsets[first]
        let end = chain.storage.count
        let total = prefixSize + (end - start)
        guard total <= buffer.count else {
            throw LogicalDeviceError(.tooLarge, "the parameter chain's \(total) bytes do not fit one message")
        }
        buffer.storeBytes(of: UInt16(chain.count - first).littleEndian, toByteOffset: 0, as: UInt16.self)
        buffer.storeBytes(of: UInt16(max(0, chain.claimedCount - first)).littleEndian, toByteOffset: 2, as: UInt16.self)
        UnsafeMutableRawBufferPointer(rebasing: buffer[prefixSize..<total])
            .copyMemory(from: UnsafeRawBufferPointer(rebasing: chain.storage[start..<end]))
        return total
    }

    /// Decodes a chain that arrived, checking every block. The first block is the request's
    /// own and counts as claimed.
    /// `reusing`, a chain decoded before, is filled instead of allocating when it has the same shape.
    static func decode(_ bytes: UnsafeRawBufferPointer, reusing previous: ParameterChain? = nil) throws(LogicalDeviceError) -> ParameterChain {
        var sameShape = previous != nil && previous!.storage.count == bytes.count - prefixSize
        let (count, claimed) = try check(bytes) { index, input, output in
            if sameShape {
                sameShape = index < previous!.count && previous!.blockSize(index) == BlockLayout.headerSize + input + output
            }
        }
        let chain: ParameterChain
        if let previous, sameShape, previous.count == count {
            chain = previous
            for index in 0..<chain.count {
                chain.requestPayloads[index] = nil
                chain.replyPayloads[index] = nil
            }
        } else {
            var capacities: [ParameterChain.Capacity] = []
            _ = try check(bytes) { _, input, output in capacities.append(ParameterChain.Capacity(input: input, output: output)) }
            chain = try ParameterChain(capacities: capacities)
        }
        UnsafeMutableRawBufferPointer(rebasing: chain.storage[0..<bytes.count - prefixSize])
            .copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[prefixSize...]))
        chain.claimedCount = max(1, claimed)
        return chain
    }

    /// Copies blocks that came back from a provider over blocks `first...` of `chain`; they
    /// must have the same shape as the ones sent.
    static func copyBack(_ bytes: UnsafeRawBufferPointer, into chain: ParameterChain, at first: Int) throws(LogicalDeviceError) {
        var sameShape = true
        let (count, claimed) = try check(bytes) { index, input, output in
            if sameShape {
                sameShape = first + index < chain.count && chain.blockSize(first + index) == BlockLayout.headerSize + input + output
            }
        }
        guard sameShape, count == chain.count - first else { throw WireMessage.malformed("the provider returned parameter blocks of another shape than were sent") }
        UnsafeMutableRawBufferPointer(rebasing: chain.storage[chain.offsets[first]...])
            .copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[prefixSize...]))
        chain.claimedCount = max(chain.claimedCount, first + claimed)
    }

    /// Walks the blocks, checking that each header's sizes fit, lengths are within
    /// capacities, and the type, name and status are valid.
    /// Calls `visit` with each block's index and area capacities; returns the block count and
    /// the number claimed.
    static func check(
        _ bytes: UnsafeRawBufferPointer, visit: (Int, Int, Int) -> Void
    ) throws(LogicalDeviceError) -> (Int, Int) {
        guard bytes.count >= prefixSize else { throw WireMessage.malformed("a parameter chain needs at least \(prefixSize) bytes") }
        let count = Int(UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 0, as: UInt16.self)))
        let claimed = Int(UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 2, as: UInt16.self)))
        guard count >= 1, claimed <= count else { throw WireMessage.malformed("\(count) blocks with \(claimed) claimed") }
        var offset = prefixSize
        for index in 0..<count {
            guard bytes.count - offset >= BlockLayout.headerSize else { throw WireMessage.malformed("block \(index) is cut short") }
            func field<T: FixedWidthInteger>(_ type: T.Type, _ at: Int) -> Int {
                Int(T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset + at, as: T.self)))
            }
            let input = field(UInt32.self, BlockLayout.inputCapacity)
            let output = field(UInt32.self, BlockLayout.outputCapacity)
            guard input <= ParameterChain.maximumBytes, output <= ParameterChain.maximumBytes,
                  bytes.count - offset - BlockLayout.headerSize >= input + output
            else { throw WireMessage.malformed("block \(index)'s areas (\(input) and \(output) bytes) overrun the message") }
            guard field(UInt32.self, BlockLayout.inputLength) <= input, field(UInt32.self, BlockLayout.outputLength) <= output else {
                throw WireMessage.malformed("block \(index) claims more bytes than its areas hold")
            }
            let type = field(UInt16.self, BlockLayout.requestType)
            guard type == 0 || RequestType(rawValue: UInt16(type)) != nil else { throw WireMessage.malformed("block \(index) has request type \(type)") }
            let status = field(UInt16.self, BlockLayout.status)
            guard status == 0 || LogicalDeviceError.Kind(rawValue: UInt16(status)) != nil else {
                throw WireMessage.malformed("block \(index) has status \(status)")
            }
            guard RequestFlags.all.isSuperset(of: RequestFlags(rawValue: UInt16(field(UInt16.self, BlockLayout.flags)))) else {
                throw WireMessage.malformed("block \(index) has unknown flags")
            }
            guard field(UInt16.self, BlockLayout.nameLength) <= BlockLayout.nameCapacity else {
                throw WireMessage.malformed("block \(index)'s device name is too long")
            }
            visit(index, input, output)
            offset += BlockLayout.headerSize + input + output
        }
        guard offset == bytes.count else { throw WireMessage.malformed("\(bytes.count - offset) bytes follow the last block") }
        return (count, claimed)
    }
}
