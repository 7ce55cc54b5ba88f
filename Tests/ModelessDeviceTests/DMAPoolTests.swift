@testable import ModelessDevice
import Testing

@Suite struct DMAPoolTests {
    @Test func chunksAreDistinctAlignedAndReusable() throws {
        let device = try openEdu(FakeVFIOKernel())
        let pool = try DMAPool(device: device, chunkSize: 2000, count: 16)
        #expect(pool.chunkSize == 2048)
        var chunks: [DMAPool.Chunk] = []
        while let chunk = pool.allocate() { chunks.append(chunk) }
        #expect(chunks.count == 16 && pool.available == 0)
        #expect(Set(chunks.map(\.deviceAddress)).count == 16)
        #expect(chunks.allSatisfy { ($0.deviceAddress - pool.buffer.deviceAddress) % 2048 == 0 })
        try pool.write([1, 2, 3], to: chunks[3], at: 2045)
        #expect(try pool.read(3, from: chunks[3], at: 2045) == [1, 2, 3])
        #expect(try pool.read(1, from: chunks[4]) == [0])
        #expect(throws: DeviceError.self) { try pool.write([1, 2, 3, 4], to: chunks[3], at: 2045) }
        #expect(throws: DeviceError.self) { try pool.load32(chunks[0], at: 2048) }
        pool.release(chunks[5])
        #expect(pool.allocate() == chunks[5])
    }
}
