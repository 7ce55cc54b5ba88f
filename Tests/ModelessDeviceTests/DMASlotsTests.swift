@testable import ModelessDevice
import Testing

/// A buffer seen as slots: checked once when the view is made, then each access by its slot.
@Suite struct DMASlotsTests {
    @Test func storesThroughSlotsLandWhereTheBuffersOwnChecksReadThem() throws {
        let device = try openEdu(FakeVFIOKernel())
        let pool = try DMAPool(device: device, chunkSize: 2048, count: 8)
        let slots = try pool.slots()
        #expect(slots.count == 8 && slots.stride == 2048)
        slots.store64(0x0102_0304_0506_0708, slot: 7, at: 2040)
        slots.store8(0xAB, slot: 3, at: 5)
        #expect(slots.load8(slot: 3, at: 5) == 0xAB)
        let written = slots.withWriter(slot: 2, capacity: 60) { writer in
            writer.set([9, 8, 7], at: 0)
            writer.setBigEndian32(0xDEAD_BEEF, at: 14)
        }
        #expect(written == 18, "the writer's count: one past the highest byte written")
        #expect(try pool.load64(pool.chunk(7), at: 2040) == 0x0102_0304_0506_0708)
        #expect(try pool.read(1, from: pool.chunk(3), at: 5) == [0xAB])
        #expect(try pool.read(3, from: pool.chunk(2)) == [9, 8, 7])
        #expect(try pool.read(4, from: pool.chunk(2), at: 14) == [0xDE, 0xAD, 0xBE, 0xEF])
        let ring = try pool.buffer.slots(stride: 16, count: 1024)
        #expect(ring.count == 1024, "the whole buffer as 16-byte descriptors")
    }

    @Test func slotsThatDoNotFitOrOfAFreedBufferAreRefused() throws {
        let device = try openEdu(FakeVFIOKernel())
        let buffer = try device.allocateDMA(size: 4096)
        for (stride, count) in [(16, 257), (0, 4), (-16, 4), (16, -1), (Int.max, 2)] {
            #expect(throws: DeviceError.self, "\(count) slots of \(stride) bytes") { _ = try buffer.slots(stride: stride, count: count) }
        }
        buffer.free()
        let error = #expect(throws: DeviceError.self) { _ = try buffer.slots(stride: 16, count: 1) }
        #expect(error?.kind == .closed, "a freed buffer is refused as closed: \(String(describing: error))")
    }
}
